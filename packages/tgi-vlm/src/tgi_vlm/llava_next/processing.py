"""LLaVA-NeXT image preprocessing, the torch side: patches -> ``pixel_values``.

The same computation as transformers' ``LlavaNextImageProcessor`` (its PIL backend, the
classic one). Everything that reads pixels (RGB conversion, grid choice, resizes, padding,
patches, centre crop) is Pillow's and lives in ``tgi_vlm.llava_next.patches`` (bit-exact with
transformers, which also resizes through Pillow); what is left here is the arithmetic, in the
same dtypes as transformers' numpy (rescale in float64, normalize in float32).

``processed_image`` is the engine's path: it reads the raw patches the front end packed into
an ``ImageInput`` and decodes nothing. ``preprocess`` does both halves on a PIL image.

Batching (padding every image to the same number of patches) is not done here: each image
keeps its own patch count, which is what the vision tower needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from tgi_core.contract import ImageInput
from tgi_vlm.llava_next.config import ImageProcessorConfig
from tgi_vlm.llava_next.patches import patches_input, patches_shape

__all__ = ["ProcessedImage", "preprocess", "processed_image"]


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


def preprocess(image: Image.Image, config: ImageProcessorConfig) -> ProcessedImage:
    """``LlavaNextImageProcessor.preprocess`` for one image, without batch padding."""
    return processed_image(patches_input(image, config), config)


def processed_image(image: ImageInput, config: ImageProcessorConfig) -> ProcessedImage:
    """The pixel values of the raw patches in ``image`` (a ``patches_input``).

    Raises:
        ValueError: ``image`` does not hold raw patches.
    """
    num_patches, height, width = patches_shape(image)
    buffer = bytearray(image.data)  # writable, so torch.frombuffer does not warn
    pixels = (
        torch.frombuffer(buffer, dtype=torch.uint8)
        .view(num_patches, height, width, 3)
        .permute(0, 3, 1, 2)
    )
    values = pixels.to(torch.float32)
    if config.do_rescale:
        # transformers rescales in float64 and casts to float32 afterwards.
        values = (pixels.to(torch.float64) * config.rescale_factor).to(torch.float32)
    if config.do_normalize:
        mean = torch.tensor(config.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(config.image_std, dtype=torch.float32)[:, None, None]
        values = (values - mean) / std
    return ProcessedImage(values.contiguous(), (image.height, image.width))
