"""What a vision-language family gives the server: one ``VlmFamily`` per ``model_type``.

A family says where its text model sits in the checkpoint (the runner serves that model:
``tgi_hpu_kernels.nested_model``) and builds its two image hooks from the checkpoint's
folder: the front end's prompt encoder and the runner's prompt embedder. Each family
describes itself in its subpackage (``tgi_vlm.llava_next.family``); ``tgi_vlm.registry``
lists them. Torch-free: the factories import their torch parts when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tgi_core.settings.slices import ImageLimits, RunnerSettings
from tgi_core.validation.generate import ImagePromptEncoder, TextEncoder
from tgi_hpu_kernels.nested_model import NestedTextModel

if TYPE_CHECKING:
    from tgi_hpu_kernels.prompt_embedding import PromptEmbedder

__all__ = ["VlmFamily"]


@dataclass(frozen=True)
class VlmFamily:
    """One vision-language architecture.

    Attributes:
        model_type: the checkpoint's ``config.json`` ``model_type``.
        name: how messages name it (``LLaVA-NeXT``).
        nested_model: the text model's config key and weight prefixes in the checkpoint.
        prompt_encoder: (folder, tokenizer, limits) -> the front end's encoder.
        prompt_embedder: (folder, runner settings) -> the runner's embedder.
    """

    model_type: str
    name: str
    nested_model: NestedTextModel
    prompt_encoder: Callable[[Path, TextEncoder, ImageLimits], ImagePromptEncoder]
    prompt_embedder: Callable[[Path, RunnerSettings], PromptEmbedder]
