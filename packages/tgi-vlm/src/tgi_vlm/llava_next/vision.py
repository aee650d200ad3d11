"""LLaVA-NeXT's vision side: pixel values -> the image embeddings the language model reads.

``LlavaNextVision`` runs the CLIP tower on every patch of every image at once, keeps the
selected layer's features without CLS (the ``default`` strategy), projects them into
the language model's space (linear -> activation -> linear), then packs each image's patch
grid the "anyres" way (``pack_image_features``): the grid is reassembled into one feature
map, the letterbox padding is cut off, an ``image_newline`` vector ends every row, and the
base image's features come first. The result has exactly ``num_image_tokens`` rows per
image, in the order of the ``<image>`` placeholders; ``merge_image_embeddings`` writes them
over the placeholder rows of the prompt's token embeddings, as transformers' forward does.

The language model is not here: it is the runner's (tgi_hpu_kernels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tgi_vlm.llava_next.clip import ClipVisionTower, activation
from tgi_vlm.llava_next.config import LlavaNextConfig
from tgi_vlm.llava_next.grid import select_best_resolution
from tgi_vlm.llava_next.processing import ProcessedImage

__all__ = [
    "LlavaNextVision",
    "MultiModalProjector",
    "merge_image_embeddings",
    "pack_image_features",
    "unpad_features",
]


class MultiModalProjector(nn.Module):
    """Vision features -> language-model hidden size: linear, activation, linear."""

    def __init__(self, config: LlavaNextConfig) -> None:
        super().__init__()
        in_features = config.vision.hidden_size * len(config.feature_layers)
        hidden = config.text_hidden_size
        bias = config.multimodal_projector_bias
        self.linear_1 = nn.Linear(in_features, hidden, bias=bias)
        self.linear_2 = nn.Linear(hidden, hidden, bias=bias)
        self._act = activation(config.projector_hidden_act)

    def forward(self, features: Tensor) -> Tensor:
        result: Tensor = self.linear_2(self._act(self.linear_1(features)))
        return result


def unpad_features(features: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Cuts the rows (or columns) of a ``[D, H, W]`` feature map that only saw padding."""
    original_height, original_width = image_size
    current_height, current_width = features.shape[1:]
    if original_width / original_height > current_width / current_height:
        # Rounded to 7 digits first, as transformers does, so float error never drops a row.
        new_height = int(round(original_height * (current_width / original_width), 7))
        padding = (current_height - new_height) // 2
        return features[:, padding : current_height - padding, :]
    new_width = int(round(original_width * (current_height / original_height), 7))
    padding = (current_width - new_width) // 2
    return features[:, :, padding : current_width - padding]


def pack_image_features(
    features: Tensor, image_size: tuple[int, int], config: LlavaNextConfig, image_newline: Tensor
) -> Tensor:
    """One image's projected features ``[num_patches, tokens, D]`` -> ``[num_tokens, D]``.

    transformers' ``LlavaNextModel.pack_image_features`` for one image (``spatial_unpad``).
    """
    image_newline = image_newline.to(features.device, features.dtype)
    if features.shape[0] == 1:
        return torch.cat([features[0], image_newline[None]], dim=0)
    base, grid = features[0], features[1:]
    side = config.vision.num_patches_per_side
    best_height, best_width = select_best_resolution(image_size, config.image_grid_pinpoints)
    grid_rows = best_height // config.vision.image_size
    grid_cols = best_width // config.vision.image_size
    # [rows, cols, side, side, D] -> [D, rows * side, cols * side]: one feature map.
    grid = grid.view(grid_rows, grid_cols, side, side, -1).permute(4, 0, 2, 1, 3)
    grid = grid.flatten(1, 2).flatten(2, 3)
    grid = unpad_features(grid, image_size)
    newlines = image_newline[:, None, None].expand(*grid.shape[:-1], 1)
    grid = torch.cat([grid, newlines], dim=-1)  # a newline feature ends every row
    return torch.cat([base, grid.flatten(1, 2).transpose(0, 1)], dim=0)


class LlavaNextVision(nn.Module):
    """CLIP tower + projector + ``image_newline``: processed images -> image embeddings.

    Raises:
        ValueError: the ``full`` feature strategy. It keeps CLIP's CLS token, so a patch has
            one feature more than its grid cells and the anyres grid cannot be rebuilt
            (transformers' ``pack_image_features`` fails on it as well).
    """

    def __init__(self, config: LlavaNextConfig) -> None:
        super().__init__()
        if config.vision_feature_select_strategy != "default":
            msg = (
                f"vision_feature_select_strategy {config.vision_feature_select_strategy!r} "
                "is not supported with a CLIP tower (its CLS feature breaks anyres packing)"
            )
            raise ValueError(msg)
        self.config = config
        self.vision_tower = ClipVisionTower(config.vision, config.feature_layers)
        self.multi_modal_projector = MultiModalProjector(config)
        self.image_newline = nn.Parameter(torch.empty(config.text_hidden_size))

    def forward(
        self,
        pixel_values: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        num_patches: Sequence[int],
    ) -> list[Tensor]:
        """Embeddings of several images whose patches are concatenated in ``pixel_values``.

        Args:
            pixel_values: ``[sum(num_patches), 3, H, W]``.
            image_sizes: each image's original (height, width).
            num_patches: each image's number of patches (base image included).

        Returns:
            One ``[num_image_tokens, text_hidden_size]`` tensor per image.
        """
        features = self.vision_tower(pixel_values)[:, 1:]  # CLIP's CLS is not an image feature
        features = self.multi_modal_projector(features)
        return [
            pack_image_features(image_features, image_size, self.config, self.image_newline)
            for image_features, image_size in zip(
                torch.split(features, list(num_patches)), image_sizes, strict=True
            )
        ]

    def embed(self, images: Sequence[ProcessedImage]) -> list[Tensor]:
        """Embeddings of preprocessed images, on this module's device and dtype."""
        if not images:
            return []
        weight = self.multi_modal_projector.linear_1.weight
        pixel_values = torch.cat([image.pixel_values for image in images]).to(
            weight.device, weight.dtype
        )
        embeds: list[Tensor] = self(
            pixel_values,
            [image.image_size for image in images],
            [image.num_patches for image in images],
        )
        return embeds


def merge_image_embeddings(
    inputs_embeds: Tensor, input_ids: Tensor, image_token_id: int, image_embeds: Sequence[Tensor]
) -> Tensor:
    """The token embeddings with every ``image_token_id`` row replaced, in order, by the rows
    of ``image_embeds`` (concatenated); ``inputs_embeds`` is ``input_ids.shape + (D,)``.

    Raises:
        ValueError: the number of placeholder tokens is not the number of image features.
    """
    mask = input_ids == image_token_id
    num_tokens = int(mask.sum())
    features = torch.cat(list(image_embeds)) if image_embeds else None
    num_features = 0 if features is None else int(features.shape[0])
    if num_tokens != num_features:
        msg = (
            "Image features and image tokens do not match, "
            f"tokens: {num_tokens}, features: {num_features}"
        )
        raise ValueError(msg)
    merged = inputs_embeds.clone()
    if features is not None:
        merged[mask] = features.to(merged.device, merged.dtype)
    return merged
