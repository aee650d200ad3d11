"""Phi-3 / Phi-3.5 / Phi-4-mini: the Llama decoder with fused checkpoint projections,
LongRoPE and a partial rotary factor.

- The checkpoint stores ``qkv_proj`` and ``gate_up_proj`` fused; ``checkpoint_tensors`` splits
  them into Llama's q/k/v and gate/up parts before tensor-parallel slicing, which then cuts
  each part by heads or columns as for Llama.
- LongRoPE (``rope_type`` "longrope"; legacy "su" and "yarn" mean the same in Phi-3 configs)
  uses the short factors below ``original_max_position_embeddings`` (top-level, default 4096)
  and the long ones from it on, per position (``layers/rotary.py`` says how that compares with
  transformers' per-forward choice), cos/sin scaled by the attention factor.
- With ``partial_rotary_factor`` < 1 (Phi-4-mini) only the first dims of each head rotate:
  the q/k rows of each head are loaded in ``rotary_row_order``, so the rotary tables (cos 1,
  sin 0 on the pass-through dims) and every rotary kernel, the CPU's fused decoder stack
  included, apply exactly transformers' rotation; q.k is unchanged by the shared order.
- ``sliding_window``, when set, applies to every layer (as Mistral's).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from itertools import accumulate
from typing import Any

from torch import Tensor

from tgi_hpu_kernels.layers.rotary import rotary_row_order
from tgi_hpu_kernels.models.config import ModelConfig, parse_common
from tgi_hpu_kernels.models.llama import LlamaForCausalLM

__all__ = ["Phi3ForCausalLM"]

_ORIGINAL_CONTEXT = 4096  # Phi3Config's default original_max_position_embeddings
_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def _normalised(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The config as transformers' Phi3Config reads it: one rope dict carrying the partial
    rotary factor, legacy rope types renamed, the top-level original context defaulted."""
    rope = {**(raw.get("rope_scaling") or {}), **(raw.get("rope_parameters") or {})}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    rope["rope_type"] = "longrope" if rope_type in ("su", "yarn") else rope_type
    rope.setdefault("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
    original = raw.get("original_max_position_embeddings", _ORIGINAL_CONTEXT)
    return {**raw, "rope_parameters": rope, "original_max_position_embeddings": original}


class Phi3ForCausalLM(LlamaForCausalLM):
    @classmethod
    def parse_config(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """Raises ValueError for a partial rotary factor that leaves no or an odd number of
        rotated or passed dims."""
        normalised = _normalised(raw)
        config = parse_common(normalised)
        partial = float(normalised["rope_parameters"]["partial_rotary_factor"])
        rope = replace(config.rope, partial_rotary_factor=partial)
        rotary_dim = rope.rotary_dim(config.head_dim)
        if rotary_dim <= 0 or rotary_dim % 2 or (config.head_dim - rotary_dim) % 2:
            raise ValueError(
                f"partial_rotary_factor {partial} gives {rotary_dim} rotated dims of "
                f"{config.head_dim}: they must be a non-zero even number, and so the rest"
            )
        window = raw.get("sliding_window")
        windows = () if window is None else (int(window),) * config.num_hidden_layers
        return replace(config, rope=rope, sliding_windows=windows)

    @classmethod
    def checkpoint_tensors(
        cls, weights: Iterable[tuple[str, Tensor]], raw: Mapping[str, Any]
    ) -> Iterator[tuple[str, Tensor]]:
        """Splits fused ``qkv_proj``/``gate_up_proj`` weights into Llama's projections and,
        with a partial rotary factor, puts each q/k head's rows in ``rotary_row_order``.

        Raises:
            ValueError: a fused tensor other than a plain weight (a pre-quantized
                checkpoint's), one whose rows are not the config's, or packed q/k codes
                with a partial rotary factor.
        """
        config = cls.parse_config(raw)
        head_dim, kv_size = config.head_dim, config.num_key_value_heads * config.head_dim
        sizes = {
            "qkv_proj": (config.num_attention_heads * head_dim, kv_size, kv_size),
            "gate_up_proj": (config.intermediate_size,) * 2,
        }
        rotary_dim = config.rope.rotary_dim(head_dim)
        order = rotary_row_order(head_dim, rotary_dim) if rotary_dim < head_dim else None
        for name, tensor in weights:
            fused = next((f for f in _FUSED if f".{f}." in name), None)
            if fused is None:
                parts = [(name, tensor)]
            elif not name.endswith(f".{fused}.weight"):
                raise ValueError(f"Phi-3: fused tensor {name!r} is not supported (only weights)")
            elif tensor.shape[0] != sum(sizes[fused]):
                raise ValueError(
                    f"checkpoint tensor {name!r} has {tensor.shape[0]} rows, "
                    f"expected {sum(sizes[fused])}"
                )
            else:
                starts = accumulate(sizes[fused][:-1], initial=0)
                parts = [
                    (name.replace(f".{fused}.", f".{part}."), tensor.narrow(0, start, size))
                    for part, start, size in zip(_FUSED[fused], starts, sizes[fused], strict=True)
                ]
            for part_name, part in parts:
                if order is not None and (".q_proj." in part_name or ".k_proj." in part_name):
                    yield part_name, _rows_in_order(part_name, part, head_dim, order)
                else:
                    yield part_name, part


def _rows_in_order(name: str, tensor: Tensor, head_dim: int, order: Tensor) -> Tensor:
    if not name.endswith((".weight", ".bias")):  # packed codes hold rows along another dim
        raise ValueError(f"Phi-3 with a partial rotary factor cannot load {name!r}")
    heads = tensor.shape[0] // head_dim
    return tensor.reshape(heads, head_dim, -1)[:, order].reshape(tensor.shape)
