"""LLaVA-NeXT's prompt embedder: the runner's hook that puts image features in a prefill.

``LlavaNextEmbedder`` implements ``tgi_hpu_kernels.prompt_embedding.PromptEmbedder``: for each
prefill item with images it turns their patches into pixel values (the front end decoded,
checked and cut the images: nothing is decoded here), runs the vision side once for the
item, and writes the features over the item's ``<image>`` rows of this step (rows already in
the prefix cache are skipped: their KV exists). ``tgi_vlm.registry`` builds it for a
``llava_next`` checkpoint (``llava_next/family.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from tgi_core.contract import ImageInput, PrefillItem
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.loader import torch_dtype
from tgi_vlm.llava_next.config import ImageProcessorConfig, LlavaNextConfig
from tgi_vlm.llava_next.processing import processed_image
from tgi_vlm.llava_next.vision import LlavaNextVision
from tgi_vlm.llava_next.weights import load_llava_next_vision

__all__ = ["LlavaNextEmbedder"]


class LlavaNextEmbedder:
    """Image features over ``<image>`` rows (a ``PromptEmbedder``).

    The vision side follows the embeddings it writes into: it moves to their device and
    dtype on first use.
    """

    def __init__(
        self, vision: LlavaNextVision, config: LlavaNextConfig, processor: ImageProcessorConfig
    ) -> None:
        self._vision = vision
        self._config = config
        self._processor = processor

    @classmethod
    def from_folder(cls, folder: Path, *, dtype: torch.dtype) -> LlavaNextEmbedder:
        config = LlavaNextConfig.from_folder(folder)
        vision = load_llava_next_vision(folder, dtype=dtype, config=config)
        return cls(vision, config, ImageProcessorConfig.from_folder(folder))

    @classmethod
    def for_runner(cls, folder: Path, settings: RunnerSettings) -> LlavaNextEmbedder:
        """The embedder of ``folder`` in the runner's dtype (the family's runner hook)."""
        return cls.from_folder(folder, dtype=torch_dtype(settings.dtype))

    def image_features(self, images: Sequence[ImageInput]) -> Tensor:
        """``[num_image_tokens of all images, text hidden]``: the features, in prompt order."""
        processed = [processed_image(image, self._processor) for image in images]
        return torch.cat(self._vision.embed(processed))

    @torch.inference_mode()
    def __call__(
        self, items: Sequence[PrefillItem], token_offsets: Sequence[int], inputs_embeds: Tensor
    ) -> None:
        weight = self._vision.multi_modal_projector.linear_1.weight
        if (weight.device, weight.dtype) != (inputs_embeds.device, inputs_embeds.dtype):
            self._vision.to(inputs_embeds.device, inputs_embeds.dtype)
        for item, offset in zip(items, token_offsets, strict=False):
            if item.images:
                self._write(item, offset, inputs_embeds)

    def _write(self, item: PrefillItem, offset: int, inputs_embeds: Tensor) -> None:
        # Only the prompt's: a generated <image> token (in a recompute) is a plain token.
        ids = torch.tensor(item.token_ids[: item.num_prompt_tokens], dtype=torch.int64)
        positions = (ids == self._config.image_token_id).nonzero().flatten()
        features = self.image_features(item.images)
        if positions.numel() != features.shape[0]:
            msg = (
                "Image features and image tokens do not match, "
                f"tokens: {positions.numel()}, features: {features.shape[0]}"
            )
            raise ValueError(msg)
        new = positions >= item.num_cached_tokens  # cached rows have their KV already
        rows = positions[new] - item.num_cached_tokens + offset
        inputs_embeds[rows.to(inputs_embeds.device)] = features[new.to(features.device)]
