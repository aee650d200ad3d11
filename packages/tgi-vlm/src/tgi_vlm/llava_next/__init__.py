"""LLaVA-NeXT (llava-v1.6): preprocessing, image token counts and the vision side in torch.

Torch-free, imported at once: ``LlavaNextConfig``, ``ImageProcessorConfig`` and the token
accounting of ``tokens`` (what the front end's validation needs). The torch parts
(``preprocess``, ``LlavaNextVision``, ``load_llava_next_vision``,
``merge_image_embeddings``) are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tgi_vlm.llava_next.config import ClipVisionConfig, ImageProcessorConfig, LlavaNextConfig
from tgi_vlm.llava_next.tokens import (
    IMAGE_TOKEN,
    image_placeholder,
    num_image_tokens,
    tokenizer_query,
)

if TYPE_CHECKING:
    from tgi_vlm.llava_next.processing import ProcessedImage, preprocess
    from tgi_vlm.llava_next.vision import LlavaNextVision, merge_image_embeddings
    from tgi_vlm.llava_next.weights import load_llava_next_vision

__all__ = [
    "IMAGE_TOKEN",
    "ClipVisionConfig",
    "ImageProcessorConfig",
    "LlavaNextConfig",
    "LlavaNextVision",
    "ProcessedImage",
    "image_placeholder",
    "load_llava_next_vision",
    "merge_image_embeddings",
    "num_image_tokens",
    "preprocess",
    "tokenizer_query",
]

_LAZY = {
    "ProcessedImage": "tgi_vlm.llava_next.processing",
    "preprocess": "tgi_vlm.llava_next.processing",
    "LlavaNextVision": "tgi_vlm.llava_next.vision",
    "merge_image_embeddings": "tgi_vlm.llava_next.vision",
    "load_llava_next_vision": "tgi_vlm.llava_next.weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tgi_vlm.llava_next' has no attribute {name!r}")
