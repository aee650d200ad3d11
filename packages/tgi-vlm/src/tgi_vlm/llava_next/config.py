"""LLaVA-NeXT's configuration: the vision side of ``config.json`` and ``preprocessor_config.json``.

``LlavaNextConfig`` holds what the image path needs (CLIP tower, projector, feature layer and
strategy, grid pinpoints, the image token); the language model's config is the runner's
business. Missing keys take transformers' defaults: ``LlavaNextConfig``'s own for an absent
``vision_config``, ``CLIPVisionConfig``'s for keys absent from a present one.
``ImageProcessorConfig`` mirrors ``LlavaNextImageProcessor``'s options and defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ClipVisionConfig",
    "ImageProcessorConfig",
    "LlavaNextConfig",
    "read_json",
]

FeatureStrategy = Literal["default", "full"]
Pinpoints = tuple[tuple[int, int], ...]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_PINPOINTS: Pinpoints = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
# LlavaNextConfig's vision tower when config.json has no vision_config (CLIP ViT-L/14-336).
_LLAVA_VISION_DEFAULTS = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
}
_DEFAULT_TEXT_HIDDEN_SIZE = 4096  # LlamaConfig's and MistralConfig's default


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (ValueError when it cannot be read or is not an object)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return raw


def _pinpoints(raw: Sequence[Sequence[int]] | None) -> Pinpoints:
    if raw is None:
        return DEFAULT_PINPOINTS
    return tuple((int(height), int(width)) for height, width in raw)


@dataclass(frozen=True, slots=True)
class ClipVisionConfig:
    """A CLIP vision transformer (``CLIPVisionConfig``; defaults are its own)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ClipVisionConfig:
        model_type = raw.get("model_type", "clip_vision_model")
        if model_type != "clip_vision_model":
            msg = f"vision tower {model_type!r} is not supported (only clip_vision_model)"
            raise ValueError(msg)
        names = cls.__dataclass_fields__
        return cls(**{name: raw[name] for name in names if name in raw})

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True, slots=True)
class LlavaNextConfig:
    """The vision side of a ``llava_next`` ``config.json``."""

    vision: ClipVisionConfig
    text_hidden_size: int = _DEFAULT_TEXT_HIDDEN_SIZE
    image_token_id: int = 32000
    image_grid_pinpoints: Pinpoints = DEFAULT_PINPOINTS
    vision_feature_layer: int | tuple[int, ...] = -2
    vision_feature_select_strategy: FeatureStrategy = "default"
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LlavaNextConfig:
        """Parses a ``config.json`` whose ``model_type`` is ``llava_next``."""
        if raw.get("model_type", "llava_next") != "llava_next":
            raise ValueError(f"model_type {raw.get('model_type')!r} is not llava_next")
        vision_raw = raw.get("vision_config")
        vision = ClipVisionConfig.from_dict(
            _LLAVA_VISION_DEFAULTS if vision_raw is None else vision_raw
        )
        text_raw = raw.get("text_config") or {}
        layer = raw.get("vision_feature_layer", -2)
        strategy = raw.get("vision_feature_select_strategy", "default")
        if strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy {strategy!r} is not supported")
        return cls(
            vision=vision,
            text_hidden_size=int(text_raw.get("hidden_size", _DEFAULT_TEXT_HIDDEN_SIZE)),
            image_token_id=int(raw.get("image_token_index", raw.get("image_token_id", 32000))),
            image_grid_pinpoints=_pinpoints(raw.get("image_grid_pinpoints")),
            vision_feature_layer=layer if isinstance(layer, int) else tuple(layer),
            vision_feature_select_strategy=strategy,
            projector_hidden_act=raw.get("projector_hidden_act", "gelu"),
            multimodal_projector_bias=bool(raw.get("multimodal_projector_bias", True)),
        )

    @classmethod
    def from_folder(cls, folder: Path) -> LlavaNextConfig:
        return cls.from_dict(read_json(folder / "config.json"))

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """The vision hidden states the projector reads, as indices into (embeddings, layer
        1, ..., layer N); negative indices count from the end, as in transformers."""
        layer = self.vision_feature_layer
        return (layer,) if isinstance(layer, int) else layer


@dataclass(frozen=True, slots=True)
class ImageProcessorConfig:
    """``LlavaNextImageProcessor``'s options (``preprocessor_config.json``), its defaults.

    ``size`` is ``{"shortest_edge": n}`` or ``{"height": h, "width": w}``, as transformers
    takes it; ``crop_size`` is (height, width); ``resample`` a Pillow filter (3 = bicubic).
    """

    image_grid_pinpoints: Pinpoints = DEFAULT_PINPOINTS
    size: tuple[tuple[str, int], ...] = (("shortest_edge", 224),)
    crop_size: tuple[int, int] = (224, 224)
    resample: int = 3
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    do_convert_rgb: bool = True

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ImageProcessorConfig:
        defaults = cls()
        size = raw.get("size", dict(defaults.size))
        if isinstance(size, int):  # transformers' get_size_dict: an int is the shortest edge
            size = {"shortest_edge": size}
        crop = raw.get("crop_size", {"height": 224, "width": 224})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        return cls(
            image_grid_pinpoints=_pinpoints(raw.get("image_grid_pinpoints")),
            size=tuple(sorted((str(key), int(value)) for key, value in size.items())),
            crop_size=(int(crop["height"]), int(crop["width"])),
            resample=int(raw.get("resample", defaults.resample)),
            do_resize=bool(raw.get("do_resize", True)),
            do_center_crop=bool(raw.get("do_center_crop", True)),
            do_rescale=bool(raw.get("do_rescale", True)),
            rescale_factor=float(raw.get("rescale_factor", defaults.rescale_factor)),
            do_normalize=bool(raw.get("do_normalize", True)),
            image_mean=_channels(raw.get("image_mean", OPENAI_CLIP_MEAN)),
            image_std=_channels(raw.get("image_std", OPENAI_CLIP_STD)),
            do_convert_rgb=bool(raw.get("do_convert_rgb", True)),
        )

    @classmethod
    def from_folder(cls, folder: Path) -> ImageProcessorConfig:
        return cls.from_dict(read_json(folder / "preprocessor_config.json"))

    @property
    def size_dict(self) -> dict[str, int]:
        return dict(self.size)


def _channels(value: float | Sequence[float]) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    return tuple(float(v) for v in value)
