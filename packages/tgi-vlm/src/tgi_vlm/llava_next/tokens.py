"""How many prompt tokens a LLaVA-NeXT image costs, and the prompt text that accounts for it.

``num_image_tokens`` equals transformers' ``LlavaNextProcessor`` count (and TGI's router's):
the image is fitted into the best grid resolution of ``image_grid_pinpoints``; the grid's
features, with the padding rows or columns removed (``unpadded``), plus one newline feature
per remaining row, plus the base image's ``(image_size / patch_size) ** 2`` features (one
more with the ``full`` strategy, which keeps CLIP's CLS token: counted as transformers
counts it, though neither transformers nor ``LlavaNextVision`` can run that strategy).

``tokenizer_query`` is what TGI's router tokenizes for a prompt with images: each image
becomes ``<image>`` repeated that many times, so the prompt's token count (and
``max_input_tokens`` / ``max_total_tokens`` validation) includes the image features, and the
placeholder positions are exactly where the runner writes the image embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable

from tgi_vlm.chunks import InputChunk, TextChunk
from tgi_vlm.llava_next.config import LlavaNextConfig
from tgi_vlm.llava_next.grid import select_best_resolution

__all__ = ["IMAGE_TOKEN", "image_placeholder", "num_image_tokens", "tokenizer_query"]

IMAGE_TOKEN = "<image>"


def num_image_tokens(config: LlavaNextConfig, height: int, width: int) -> int:
    """The number of features (= placeholder tokens) of a ``height`` x ``width`` image."""
    image_size = config.vision.image_size
    patches_per_side = config.vision.num_patches_per_side
    best_height, best_width = select_best_resolution((height, width), config.image_grid_pinpoints)
    unpadded, newlines = _unpadded_features(
        height,
        width,
        patches_per_side * (best_height // image_size),
        patches_per_side * (best_width // image_size),
    )
    base = patches_per_side**2 + (1 if config.vision_feature_select_strategy == "full" else 0)
    return unpadded + newlines + base


def _unpadded_features(
    height: int, width: int, grid_height: int, grid_width: int
) -> tuple[int, int]:
    """Grid features left once the letterbox padding is cut, and one newline per row."""
    if width / height > grid_width / grid_height:
        # Rounded to 7 digits first, as transformers does, so float error never drops a row.
        new_height = int(round(height * (grid_width / width), 7))
        grid_height -= (grid_height - new_height) // 2 * 2
    else:
        new_width = int(round(width * (grid_height / height), 7))
        grid_width -= (grid_width - new_width) // 2 * 2
    return grid_height * grid_width, grid_height


def image_placeholder(config: LlavaNextConfig, height: int, width: int) -> str:
    """``<image>`` repeated once per feature of the image."""
    return IMAGE_TOKEN * num_image_tokens(config, height, width)


def tokenizer_query(chunks: Iterable[InputChunk], config: LlavaNextConfig) -> str:
    """The text TGI's router tokenizes: text chunks as they are, images as placeholders."""
    return "".join(
        chunk.text
        if isinstance(chunk, TextChunk)
        else image_placeholder(config, chunk.height, chunk.width)
        for chunk in chunks
    )
