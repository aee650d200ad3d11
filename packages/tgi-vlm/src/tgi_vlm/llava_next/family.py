"""LLaVA-NeXT as a ``VlmFamily``: its text model's place in the checkpoint and its hooks.

The text model is ``text_config`` (a Llama when it names no type, as transformers' default)
and the ``language_model`` tensors. Both key layouts are read: the hub's and transformers
4's (``language_model.model.*``, ``language_model.lm_head.*``) and transformers 5's
(``model.language_model.*``, ``lm_head.*``); the vision tensors are ``weights.py``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tgi_core.settings.slices import ImageLimits, RunnerSettings
from tgi_core.validation.generate import TextEncoder
from tgi_hpu_kernels.nested_model import NestedTextModel
from tgi_vlm.family import VlmFamily

if TYPE_CHECKING:
    from tgi_vlm.llava_next.embedder import LlavaNextEmbedder
    from tgi_vlm.llava_next.prompt import LlavaNextPromptEncoder

__all__ = ["LLAVA_NEXT"]


def _prompt_encoder(
    folder: Path, tokenizer: TextEncoder, limits: ImageLimits
) -> LlavaNextPromptEncoder:
    from tgi_vlm.llava_next.prompt import LlavaNextPromptEncoder

    return LlavaNextPromptEncoder.from_folder(folder, tokenizer, limits)


def _prompt_embedder(folder: Path, settings: RunnerSettings) -> LlavaNextEmbedder:
    from tgi_hpu_kernels.loader import torch_dtype
    from tgi_vlm.llava_next.embedder import LlavaNextEmbedder

    return LlavaNextEmbedder.from_folder(folder, dtype=torch_dtype(settings.dtype))


LLAVA_NEXT = VlmFamily(
    model_type="llava_next",
    name="LLaVA-NeXT",
    nested_model=NestedTextModel(
        config_key="text_config",
        default_model_type="llama",
        weight_prefixes=(
            ("language_model.model.", "model."),
            ("language_model.lm_head.", "lm_head."),
            ("model.language_model.", "model."),
            ("lm_head.", "lm_head."),
        ),
    ),
    prompt_encoder=_prompt_encoder,
    prompt_embedder=_prompt_embedder,
)
