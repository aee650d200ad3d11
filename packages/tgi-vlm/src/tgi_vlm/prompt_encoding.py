"""The front end's side of a VLM family: its prompt encoder (images in the prompt -> tokens)."""

from __future__ import annotations

from pathlib import Path

from tgi_core.settings.slices import ImageLimits
from tgi_core.validation.generate import ImagePromptEncoder, TextEncoder
from tgi_vlm.family import resolve_hook
from tgi_vlm.fetch import DEFAULT_IMAGE_LIMITS
from tgi_vlm.registry import read_family

__all__ = ["prompt_encoder_for"]


def prompt_encoder_for(
    model_id: str, tokenizer: TextEncoder, limits: ImageLimits = DEFAULT_IMAGE_LIMITS
) -> ImagePromptEncoder | None:
    """The front end's encoder when ``model_id`` is a local VLM folder, else None."""
    folder = Path(model_id)
    family = read_family(folder)
    if family is None:
        return None
    encoder: ImagePromptEncoder = resolve_hook(family.prompt_encoder)(folder, tokenizer, limits)
    return encoder
