"""What a vision-language family gives the server: one ``VlmFamily`` per ``model_type``.

A family says where its text model sits in the checkpoint (the runner serves that model:
``tgi_core.nested_model``) and names its two image hooks, each built from the checkpoint's
folder: the front end's prompt encoder (``tgi_vlm.prompt_encoding``) and the runner's
prompt embedder (``tgi_vlm.runner_parts``). The hooks are named as ``"module:attribute"``
and imported only where they are built, so the front end never imports a family's torch
side and the engine never imports its HTTP wording. Each family describes itself in its
subpackage (``tgi_vlm.llava_next.family``); ``tgi_vlm.registry`` lists them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from tgi_core.nested_model import NestedTextModel

__all__ = ["VlmFamily", "resolve_hook"]


@dataclass(frozen=True)
class VlmFamily:
    """One vision-language architecture.

    Attributes:
        model_type: the checkpoint's ``config.json`` ``model_type``.
        name: how messages name it (``LLaVA-NeXT``).
        nested_model: the text model's config key and weight prefixes in the checkpoint.
        prompt_encoder: ``"module:attribute"`` of (folder, tokenizer, limits) -> the front
            end's ``ImagePromptEncoder``.
        prompt_embedder: ``"module:attribute"`` of (folder, runner settings) -> the runner's
            ``PromptEmbedder``.
    """

    model_type: str
    name: str
    nested_model: NestedTextModel
    prompt_encoder: str
    prompt_embedder: str


def resolve_hook(reference: str) -> Any:
    """The object ``"package.module:Name.attribute"`` names, its module imported now."""
    module_name, _, path = reference.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in path.split("."):
        found = getattr(found, part)
    return found
