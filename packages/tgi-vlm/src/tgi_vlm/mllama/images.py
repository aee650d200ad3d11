"""Mllama's image inputs on the engine: pixels once per sequence, the mask every step.

``prepare`` decodes a sequence's images and tiles them with transformers'
``MllamaImageProcessorPil`` (the checkpoint's ``preprocessor_config.json``): pixel values,
aspect ratio ids and masks, and each image's tile count. ``inputs`` adds the
cross-attention mask of a history as transformers' processor builds it for the prompt
(``get_cross_attention_token_mask``: from an image's token to the next image's, the last
one to the end), with every generated token's row a copy of the prompt's last row, as
transformers' ``generate`` extends it. The model gets ``MllamaModel``'s keyword inputs.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch import Tensor

from tgi_core.contract import ImageInput
from tgi_core.settings.slices import RunnerSettings

__all__ = ["MllamaImages"]


class _Prepared(NamedTuple):
    pixels: dict[str, Tensor]  # pixel_values, aspect_ratio_ids, aspect_ratio_mask
    num_tiles: list[int]  # per image


class MllamaImages:
    """Mllama's ``HistoryInputs`` (``tgi_hpu_kernels.models.transformers_recompute``)."""

    def __init__(self, processor: Any, image_token_id: int, max_num_tiles: int) -> None:
        self._processor = processor
        self._image_token_id = image_token_id
        self._max_num_tiles = max_num_tiles

    @classmethod
    def for_runner(cls, folder: Path, settings: RunnerSettings) -> MllamaImages:
        """The hook of a local Mllama folder (the family's runner hook)."""
        from transformers.models.mllama.image_processing_pil_mllama import (
            MllamaImageProcessorPil,
        )

        config = json.loads((folder / "config.json").read_text())
        processor = MllamaImageProcessorPil.from_pretrained(folder)
        return cls(processor, int(config["image_token_index"]), processor.max_image_tiles)

    def prepare(
        self, images: Sequence[ImageInput], *, dtype: torch.dtype, device: torch.device
    ) -> _Prepared:
        decoded = [Image.open(io.BytesIO(image.data)) for image in images]
        out = self._processor(images=[decoded], return_tensors="pt")
        pixels = {
            "pixel_values": out["pixel_values"].to(device, dtype),
            "aspect_ratio_ids": out["aspect_ratio_ids"].to(device),
            "aspect_ratio_mask": out["aspect_ratio_mask"].to(device),
        }
        return _Prepared(pixels, list(out["num_tiles"][0]))

    def inputs(self, prepared: Any, prompt: Sequence[int], length: int) -> Mapping[str, Tensor]:
        from transformers.models.mllama.processing_mllama import (
            convert_sparse_cross_attention_mask_to_dense,
            get_cross_attention_token_mask,
        )

        spans = get_cross_attention_token_mask(list(prompt), self._image_token_id)
        dense = convert_sparse_cross_attention_mask_to_dense(
            [spans], [prepared.num_tiles], self._max_num_tiles, len(prompt)
        )
        mask = torch.from_numpy(dense)
        generated = mask[:, -1:].expand(-1, length - len(prompt), -1, -1)
        device = prepared.pixels["pixel_values"].device
        cross_attention_mask = torch.cat([mask, generated], dim=1).to(device)
        return {**prepared.pixels, "cross_attention_mask": cross_attention_mask}
