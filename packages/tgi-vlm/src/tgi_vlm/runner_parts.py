"""The engine's side of a VLM family: what the runner takes to serve it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tgi_core.nested_model import NestedTextModel
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.loader import resolve_source
from tgi_vlm.family import resolve_hook
from tgi_vlm.registry import read_family

if TYPE_CHECKING:
    from tgi_hpu_kernels.models.transformers_recompute import HistoryInputs
    from tgi_hpu_kernels.prompt_embedding import PromptEmbedder

__all__ = ["VlmRunnerParts", "runner_parts_for"]


@dataclass(frozen=True)
class VlmRunnerParts:
    """What ``TorchModelRunner`` takes to serve a VLM (its ``nested_model``,
    ``prompt_embedder`` and ``history_inputs`` arguments: the first two, or the last).

    ``expands_images``: an image costs its features' count of prompt tokens (TGI-Gaudi's
    ``BASE_IMAGE_TOKENS`` applies), rather than one token.
    """

    nested_model: NestedTextModel | None
    prompt_embedder: PromptEmbedder | None  # rank 0's alone: the others receive its rows
    history_inputs: HistoryInputs | None
    expands_images: bool


def runner_parts_for(settings: RunnerSettings) -> VlmRunnerParts | None:
    """The parts of rank ``settings.rank``'s runner when ``settings.model_id`` is a VLM
    checkpoint, else None. With ``num_shard`` > 1 the vision side loads on rank 0 only.

    Raises:
        ValueError: ``num_shard`` > 1 for a family transformers serves whole (Mllama), or,
            for a family whose images expand into feature tokens, ``max_input_tokens``
            below ``BASE_IMAGE_TOKENS``, TGI-Gaudi's smallest VLM prefill length (its warmup
            cannot run then either).
    """
    source = resolve_source(settings)
    family = read_family(source.path) if source.kind == "safetensors" else None
    if family is None:
        return None
    if settings.num_shard > 1 and family.nested_model is None:
        raise ValueError(
            f"{family.name} is served on one shard only (num_shard=1): transformers serves "
            "it whole, which does not shard"
        )
    expands = family.prompt_embedder is not None
    if expands and settings.max_input_tokens < settings.base_image_tokens:
        msg = (
            f"`max_input_tokens`({settings.max_input_tokens}) must be >= BASE_IMAGE_TOKENS"
            f"({settings.base_image_tokens}) for a vision-language model: an image takes "
            "thousands of prompt tokens; raise --max-input-tokens or lower BASE_IMAGE_TOKENS"
        )
        raise ValueError(msg)
    embedder: PromptEmbedder | None = None
    if family.prompt_embedder is not None and settings.rank == 0:
        embedder = resolve_hook(family.prompt_embedder)(source.path, settings)
    history: HistoryInputs | None = None
    if family.history_inputs is not None:
        history = resolve_hook(family.history_inputs)(source.path, settings)
    return VlmRunnerParts(family.nested_model, embedder, history, expands)
