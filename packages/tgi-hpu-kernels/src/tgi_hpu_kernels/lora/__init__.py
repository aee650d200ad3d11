"""LoRA adapters (``--lora-adapters``): PEFT checkpoints read (``checkpoint.py``) and applied
per sequence in the batch (``adapters.py``). ``load_lora_adapters`` is what the runner calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tgi_core.settings.lora import parse_lora_adapter
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.lora.adapters import LoraAdapters
from tgi_hpu_kernels.lora.checkpoint import LoraWeights, adapter_folder, read_adapter
from tgi_hpu_kernels.models.llama import LlamaForCausalLM

__all__ = ["LoraAdapters", "LoraWeights", "load_lora_adapters", "read_adapter"]


def _refusal(settings: RunnerSettings, device_name: str, fp8: bool) -> str | None:
    if fp8:
        return "FP8 (Intel Neural Compressor replaces the projections the adapters hook)"
    if device_name == "cuda" and settings.cuda_graphs:
        return "CUDA graphs (pass --cuda-graphs 0)"
    if device_name == "hpu" and settings.enable_hpu_graph:
        return "HPU graphs (set ENABLE_HPU_GRAPH=false)"
    return None


def load_lora_adapters(
    model: object,
    settings: RunnerSettings,
    *,
    raw_config: Mapping[str, Any],
    device_name: str,
    fp8: bool,
) -> LoraAdapters | None:
    """Reads ``settings.lora_adapters`` and hooks them onto ``model``; None without any.

    Raises:
        ValueError: an adapter cannot be read or applied, or cannot run with these settings.
    """
    if not settings.lora_adapters:
        return None
    if not isinstance(model, LlamaForCausalLM):
        raise ValueError("LoRA adapters need a native model family, not the transformers fallback")
    refusal = _refusal(settings, device_name, fp8)
    if refusal is not None:
        raise ValueError(f"LoRA adapters cannot run with {refusal}")
    weights: list[LoraWeights] = []
    for entry in settings.lora_adapters:
        adapter = parse_lora_adapter(entry)
        if adapter is None:
            raise ValueError(f"Invalid LoRA adapter format: {entry}")
        if any(w.adapter_id == adapter.id for w in weights):
            raise ValueError(f"LoRA adapter {adapter.id!r} is given twice")
        weights.append(read_adapter(adapter.id, adapter_folder(adapter, settings)))
    model.model.fuse_layers = False  # the fused stack would skip the adapters' hooks
    return LoraAdapters.attach(
        model, weights, raw_config, rank=settings.rank, num_shard=settings.num_shard
    )
