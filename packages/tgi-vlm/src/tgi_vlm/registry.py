"""The vision-language families served, by ``model_type``: the one place the server asks.

``prompt_encoder_for`` gives the front end a local VLM folder's prompt encoder;
``runner_parts_for`` gives the runner a VLM checkpoint's text model description and prompt
embedder. Any other checkpoint gets None from both and is served as a text model: one the
runner has no text model for either (a VLM of another family) is refused there in one line.
(A VLM whose text half transformers serves as a causal LM, Gemma 3 or Mllama, is served
text-only through the fallback; images are refused.) Torch-free at import: a family's torch
parts load when its hooks are built.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tgi_core.settings.slices import ImageLimits, RunnerSettings
from tgi_core.validation.generate import ImagePromptEncoder, TextEncoder
from tgi_hpu_kernels.nested_model import NestedTextModel
from tgi_vlm.family import VlmFamily
from tgi_vlm.fetch import DEFAULT_IMAGE_LIMITS
from tgi_vlm.llava_next.family import LLAVA_NEXT

if TYPE_CHECKING:
    from tgi_hpu_kernels.prompt_embedding import PromptEmbedder

__all__ = [
    "FAMILIES",
    "VlmRunnerParts",
    "family_of",
    "prompt_encoder_for",
    "read_family",
    "runner_parts_for",
]

FAMILIES: Mapping[str, VlmFamily] = {family.model_type: family for family in (LLAVA_NEXT,)}


@dataclass(frozen=True)
class VlmRunnerParts:
    """What ``TorchModelRunner`` takes to serve a VLM (its ``nested_model`` and
    ``prompt_embedder`` arguments)."""

    nested_model: NestedTextModel
    prompt_embedder: PromptEmbedder


def family_of(config: Mapping[str, Any]) -> VlmFamily | None:
    """The family of a checkpoint's ``config.json``; None for any other model type."""
    model_type = config.get("model_type")
    return FAMILIES.get(model_type) if isinstance(model_type, str) else None


def read_family(folder: Path) -> VlmFamily | None:
    """The family of ``folder/config.json``; None where there is none or it names none."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return family_of(config) if isinstance(config, dict) else None


def prompt_encoder_for(
    model_id: str, tokenizer: TextEncoder, limits: ImageLimits = DEFAULT_IMAGE_LIMITS
) -> ImagePromptEncoder | None:
    """The front end's encoder when ``model_id`` is a local VLM folder, else None."""
    folder = Path(model_id)
    family = read_family(folder)
    return None if family is None else family.prompt_encoder(folder, tokenizer, limits)


def runner_parts_for(settings: RunnerSettings) -> VlmRunnerParts | None:
    """The runner's parts when ``settings.model_id`` is a VLM checkpoint, else None.

    Raises:
        ValueError: ``num_shard`` > 1 (not supported yet), or
            ``max_input_tokens`` below ``BASE_IMAGE_TOKENS``, TGI-Gaudi's smallest VLM
            prefill length (its warmup cannot run then either).
    """
    from tgi_hpu_kernels.loader import resolve_source

    source = resolve_source(settings)
    family = read_family(source.path) if source.kind == "safetensors" else None
    if family is None:
        return None
    if settings.num_shard > 1:
        # the shard processes build their runners without an embedder
        raise ValueError(f"{family.name} is served on one shard only (num_shard=1) for now")
    if settings.max_input_tokens < settings.base_image_tokens:
        msg = (
            f"`max_input_tokens`({settings.max_input_tokens}) must be >= BASE_IMAGE_TOKENS"
            f"({settings.base_image_tokens}) for a vision-language model: an image takes "
            "thousands of prompt tokens; raise --max-input-tokens or lower BASE_IMAGE_TOKENS"
        )
        raise ValueError(msg)
    return VlmRunnerParts(family.nested_model, family.prompt_embedder(source.path, settings))
