"""What a vision-language family gives the server: one ``VlmFamily`` per ``model_type``.

A family is served one of two ways. Either the runner serves its text model natively
(``nested_model``: where it sits in the checkpoint, ``tgi_core.nested_model``) and a prompt
embedder writes the image features over placeholder tokens (LLaVA-NeXT); or transformers
serves the whole checkpoint, recomputed every step, with the images' inputs a
``history_inputs`` hook gives it (Mllama, whose language model cross-attends to the image).
Every family has a front-end prompt encoder. The hooks are built from the checkpoint's
folder: the prompt encoder by ``tgi_vlm.prompt_encoding``, the runner's by
``tgi_vlm.runner_parts``. The hooks are named as ``"module:attribute"``
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
        prompt_encoder: ``"module:attribute"`` of (folder, tokenizer, limits) -> the front
            end's ``ImagePromptEncoder``.
        nested_model: the text model's config key and weight prefixes in the checkpoint
            (served natively); None: transformers serves the checkpoint.
        prompt_embedder: ``"module:attribute"`` of (folder, runner settings) -> the runner's
            ``PromptEmbedder`` (with ``nested_model``).
        history_inputs: ``"module:attribute"`` of (folder, runner settings) -> the
            ``HistoryInputs`` of a checkpoint transformers serves.
    """

    model_type: str
    name: str
    prompt_encoder: str
    nested_model: NestedTextModel | None = None
    prompt_embedder: str | None = None
    history_inputs: str | None = None


def resolve_hook(reference: str) -> Any:
    """The object ``"package.module:Name.attribute"`` names, its module imported now."""
    module_name, _, path = reference.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in path.split("."):
        found = getattr(found, part)
    return found
