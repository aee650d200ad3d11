"""LLaVA-NeXT image preprocessing: a PIL image -> ``pixel_values [num_patches, 3, H, W]``.

The same computation as transformers' ``LlavaNextImageProcessor`` (its PIL backend, the
classic one): pick the best resolution among ``image_grid_pinpoints``, resize the image to
fit it keeping the aspect ratio, pad it centred with black, cut it into crop-size patches,
prepend the whole image squashed to the base size, then resize / centre-crop / rescale /
normalize every patch. Resizing is Pillow's (bit-exact with transformers, which also
resizes through Pillow); the arithmetic afterwards is torch's, in the same dtypes as
transformers' numpy (rescale in float64, normalize in float32).

Batching (padding every image to the same number of patches) is not done here: each image
keeps its own patch count, which is what the vision tower needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from tgi_vlm.llava_next.config import ImageProcessorConfig
from tgi_vlm.llava_next.grid import patch_output_size, select_best_resolution

__all__ = ["ProcessedImage", "preprocess", "to_rgb"]


@dataclass(frozen=True, slots=True)
class ProcessedImage:
    """One image ready for the vision tower.

    ``pixel_values`` is float32 ``[num_patches, 3, H, W]``: the base image first, then the
    grid patches row by row. ``image_size`` is the original (height, width).
    """

    pixel_values: Tensor
    image_size: tuple[int, int]

    @property
    def num_patches(self) -> int:
        return int(self.pixel_values.shape[0])


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, transparency composited onto white (transformers' ``convert_to_rgb``)."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        return image.convert("RGB")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def preprocess(image: Image.Image, config: ImageProcessorConfig) -> ProcessedImage:
    """``LlavaNextImageProcessor.preprocess`` for one image, without batch padding."""
    # The vision tower takes 3 channels; without do_convert_rgb transformers would pass
    # other modes through and fail later, so they are converted plainly here.
    rgb = to_rgb(image) if config.do_convert_rgb else image.convert("RGB")
    original_size = (rgb.height, rgb.width)
    size = config.size_dict
    if "height" in size and "width" in size:
        base_size = (size["height"], size["width"])
    else:
        base_size = (size["shortest_edge"], size["shortest_edge"])
    patch_size = config.crop_size[0]

    best = select_best_resolution(original_size, config.image_grid_pinpoints)
    fitted = _resize(rgb, patch_output_size(original_size, best), config.resample)
    padded = _pad_centered(fitted, best)
    patches = [_resize(rgb, base_size, config.resample), *_divide(padded, patch_size)]
    pixel_values = torch.stack([_finish_patch(patch, config) for patch in patches])
    return ProcessedImage(pixel_values=pixel_values, image_size=original_size)


def _resize(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    height, width = size
    return image.resize((width, height), resample=Image.Resampling(resample))


def _pad_centered(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    # The extra pixel of an odd margin goes to the bottom / right, as in transformers.
    target_height, target_width = target
    padded = Image.new("RGB", (target_width, target_height), (0, 0, 0))
    padded.paste(image, ((target_width - image.width) // 2, (target_height - image.height) // 2))
    return padded


def _divide(image: Image.Image, patch_size: int) -> list[Image.Image]:
    """Row-major patches; edge patches are cut short when the size is not a multiple."""
    return [
        image.crop(
            (left, top, min(left + patch_size, image.width), min(top + patch_size, image.height))
        )
        for top in range(0, image.height, patch_size)
        for left in range(0, image.width, patch_size)
    ]


def _resize_output_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    """transformers' PIL-backend ``resize`` target for a ``size`` dict."""
    if "height" in size and "width" in size:
        return size["height"], size["width"]
    if "shortest_edge" not in size:
        raise ValueError(f"size must hold 'shortest_edge' or 'height' and 'width'; got {size}")
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _to_tensor(image: Image.Image) -> Tensor:
    """uint8 [3, H, W]."""
    buffer = bytearray(image.tobytes())  # writable, so torch.frombuffer does not warn
    return (
        torch.frombuffer(buffer, dtype=torch.uint8)
        .view(image.height, image.width, 3)
        .permute(2, 0, 1)
    )


def _center_crop(pixels: Tensor, crop_size: tuple[int, int]) -> Tensor:
    """transformers' ``center_crop``: zero-pads first when the image is smaller."""
    height, width = pixels.shape[-2:]
    crop_height, crop_width = crop_size
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    if top >= 0 and left >= 0:
        return pixels[:, top : top + crop_height, left : left + crop_width]
    new_height, new_width = max(crop_height, height), max(crop_width, width)
    canvas = pixels.new_zeros((pixels.shape[0], new_height, new_width))
    top_pad = math.ceil((new_height - height) / 2)
    left_pad = math.ceil((new_width - width) / 2)
    canvas[:, top_pad : top_pad + height, left_pad : left_pad + width] = pixels
    top, left = top + top_pad, left + left_pad
    return canvas[:, max(0, top) : top + crop_height, max(0, left) : left + crop_width]


def _finish_patch(patch: Image.Image, config: ImageProcessorConfig) -> Tensor:
    """Resize, centre crop, rescale and normalize one patch -> float32 [3, H, W]."""
    if config.do_resize:
        patch = _resize(
            patch, _resize_output_size(patch.height, patch.width, config.size_dict), config.resample
        )
    pixels = _to_tensor(patch)
    if config.do_center_crop:
        pixels = _center_crop(pixels, config.crop_size)
    values = pixels.to(torch.float32)
    if config.do_rescale:
        # transformers rescales in float64 and casts to float32 afterwards.
        values = (pixels.to(torch.float64) * config.rescale_factor).to(torch.float32)
    if config.do_normalize:
        mean = torch.tensor(config.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(config.image_std, dtype=torch.float32)[:, None, None]
        values = (values - mean) / std
    return values.contiguous()
