"""The anyres grid arithmetic shared by preprocessing, token counting and packing.

Pure Python (no torch), so that the front end can count image tokens without importing
torch: which grid resolution of ``image_grid_pinpoints`` an image gets, and the size it is
resized to inside it. Both follow transformers' float arithmetic exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["patch_output_size", "select_best_resolution"]


def select_best_resolution(
    original_size: tuple[int, int], possible_resolutions: Sequence[tuple[int, int]]
) -> tuple[int, int]:
    """The (height, width) among ``possible_resolutions`` that keeps the most of the image
    once fitted in it, the least wasted area breaking ties (transformers' rule, exactly)."""
    original_height, original_width = original_size
    best_fit = (original_height, original_width)
    max_effective = 0
    min_wasted = float("inf")
    for height, width in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        downscaled_width = int(original_width * scale)
        downscaled_height = int(original_height * scale)
        effective = min(downscaled_width * downscaled_height, original_width * original_height)
        wasted = width * height - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            max_effective = effective
            min_wasted = wasted
            best_fit = (height, width)
    return best_fit


def patch_output_size(
    original_size: tuple[int, int], target_resolution: tuple[int, int]
) -> tuple[int, int]:
    """The (height, width) the image is resized to so that it fits ``target_resolution``."""
    original_height, original_width = original_size
    target_height, target_width = target_resolution
    scale_w = target_width / original_width
    scale_h = target_height / original_height
    if scale_w < scale_h:
        return min(math.ceil(original_height * scale_w), target_height), target_width
    return target_height, min(math.ceil(original_width * scale_h), target_width)
