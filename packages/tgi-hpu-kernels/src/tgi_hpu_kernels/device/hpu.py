"""The Gaudi backend: lazy mode, mark_step, HPU graphs, FusedSDPA, HCCL.

The only module of the project that imports ``habana_frameworks``, and only when an HPU
backend is built. How the Gaudi switches are honoured:

- ENABLE_HPU_GRAPH (``enable_hpu_graph``): in lazy mode (PT_HPU_LAZY_MODE=1) the step module
  is wrapped with ``wrap_in_hpu_graph``, which captures one graph per input shape (bucket)
  and replays it; in eager mode it is compiled with ``torch.compile(backend="hpu_backend")``.
- LIMIT_HPU_GRAPH (``limit_hpu_graph``): prefill steps bypass the graphs
  (``bypass_hpu_graphs=True``), which saves the graph memory of the many prefill buckets.
- USE_FLASH_ATTENTION (``use_flash_attention``): prefill attention uses FusedSDPA; otherwise
  torch's SDPA math. FLASH_ATTENTION_RECOMPUTE (``flash_attention_recompute``) is FusedSDPA's
  recompute mode (less memory for long prompts).

Weight-only int4 (``--quantize gptq|awq|bitsandbytes-nf4|bitsandbytes-fp4``, a 4-bit GGUF
with ``--gguf-weights quantized``) runs as TGI-Gaudi's GPTQ/AWQ layers and INC's
``HPUWeightOnlyLinear`` do: each loaded layer is repacked once into Gaudi's uint4 words
(``layers/uint4_words.py``, bf16 scales as INC's), and every call dequantizes them with
``torch.ops.hpu.convert_from_uint4`` and multiplies. Its zero points are integers, so int4
groups are quantized with integer zero points here; it has no int8 counterpart, so
``bitsandbytes``, ``eetq`` and 8-bit GGUFs are refused at start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tgi_hpu_kernels.device.base import (
    Device,
    MemoryInfo,
    StepRunner,
    decode_attention_bmm,
    prefill_attention_bmm,
    sdpa_attention,
)
from tgi_hpu_kernels.layers.quantized import QuantizedKernels, QuantizedWeight, to_uint4_words
from tgi_hpu_kernels.layers.uint4_words import Uint4Words

__all__ = ["HpuDevice", "hpu_available"]


def hpu_available() -> bool:
    """Whether habana_frameworks is installed and sees at least one Gaudi device."""
    try:
        import habana_frameworks.torch as htorch
    except ImportError:
        return False
    return bool(htorch.hpu.is_available())


def _repeat_kv(value: Tensor, group: int) -> Tensor:
    # FusedSDPA wants as many KV heads as query heads.
    if group == 1:
        return value
    b, kv_heads, length, head_dim = value.shape
    expanded = value[:, :, None].expand(b, kv_heads, group, length, head_dim)
    return expanded.reshape(b, kv_heads * group, length, head_dim)


class HpuGraphStepRunner:
    """Calls the (graph-wrapped or compiled) step module; prefill may bypass the graphs."""

    def __init__(self, module: Callable[..., Any], *, wrapped: bool, bypass_prefill: bool) -> None:
        self._module = module
        self._wrapped = wrapped
        self._bypass_prefill = bypass_prefill
        self._shapes: set[Any] = set()

    @property
    def num_graphs(self) -> int:
        return len(self._shapes)

    def __call__(self, args: tuple[Any, ...], *, is_prefill: bool) -> Tensor:
        if not self._wrapped:
            hidden: Tensor = self._module(*args)
        elif is_prefill and self._bypass_prefill:
            hidden = self._module(*args, bypass_hpu_graphs=True)
        else:
            self._shapes.add(tuple(a.shape for a in args if isinstance(a, Tensor)))
            hidden = self._module(*args)
        return hidden


class HpuDevice(Device):
    """One Gaudi card (``hpu``)."""

    name = "hpu"
    collective_backend = "hccl"
    needs_static_shapes = True
    # TGI_GRAPH_RESERVED_MEM: share of the KV budget left to HPU graphs.
    graph_reserved_fraction = 0.1

    def __init__(
        self,
        *,
        enable_hpu_graph: bool = True,
        limit_hpu_graph: bool = True,
        use_flash_attention: bool = True,
        flash_attention_recompute: bool = True,
    ) -> None:
        import habana_frameworks.torch as htorch
        import habana_frameworks.torch.core as htcore

        super().__init__(torch.device("hpu"))
        self._htcore = htcore
        # habana_frameworks registers ``torch.hpu`` (memory, synchronize) on import.
        self._torch_hpu: Any = getattr(torch, "hpu")  # noqa: B009 (absent from torch's stubs)
        self._lazy = bool(htorch.utils.internal.is_lazy())
        self._enable_graphs = enable_hpu_graph
        self._limit_graphs = limit_hpu_graph
        self._recompute = flash_attention_recompute
        self._fused_sdpa: Any = None
        if use_flash_attention:
            from habana_frameworks.torch.hpex.kernels import FusedSDPA

            self._fused_sdpa = FusedSDPA

    def synchronize(self) -> None:
        self._torch_hpu.synchronize()

    def memory_info(self) -> MemoryInfo:
        free, total = self._torch_hpu.mem_get_info()
        return MemoryInfo(free_bytes=int(free), total_bytes=int(total))

    def kv_budget_bytes(self, memory_fraction: float) -> int:
        """TGI-Gaudi's rule: keep ``(1 - memory_fraction)`` of the card free (HPU_MEMORY_FRACTION),
        and leave TGI_GRAPH_RESERVED_MEM (10%) of the rest to HPU graphs in lazy mode."""
        info = self.memory_info()
        reserved = info.total_bytes * (1 - memory_fraction)
        graphs = self.graph_reserved_fraction if self._lazy and self._enable_graphs else 0.0
        return max(0, int((info.free_bytes - reserved) * (1 - graphs)))

    def mark_step(self) -> None:
        if self._lazy:
            self._htcore.mark_step()

    def prefill_attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None,
        scale: float,
        *,
        softcap: float | None = None,
    ) -> Tensor:
        if softcap is not None:  # neither FusedSDPA nor SDPA soft-caps scores
            return prefill_attention_bmm(query, key, value, mask, scale, softcap=softcap)
        if self._fused_sdpa is None:
            return sdpa_attention(query, key, value, mask, scale)
        group = query.shape[1] // key.shape[1]
        out: Tensor = self._fused_sdpa.apply(
            query,
            _repeat_kv(key, group),
            _repeat_kv(value, group),
            mask,
            0.0,
            mask is None,
            scale,
            "None",
            self._recompute,
        )
        return out

    def decode_attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor,
        scale: float,
        *,
        softcap: float | None = None,
    ) -> Tensor:
        return decode_attention_bmm(query, key, value, mask, scale, softcap=softcap)

    @property
    def quantized_kernels(self) -> QuantizedKernels:
        return QuantizedKernels(self.name, frozenset((4,)), integer_zero_points=True)

    def pack_quantized(self, weight: QuantizedWeight) -> Uint4Words:
        return to_uint4_words(weight, torch.bfloat16)

    def quantized_linear(self, x: Tensor, weight: QuantizedWeight, bias: Tensor | None) -> Tensor:
        words = weight.uint4
        if words is None:  # not repacked (a layer built outside the loader)
            return super().quantized_linear(x, weight, bias)
        dense = torch.ops.hpu.convert_from_uint4(words.qweight, words.scales, words.qzeros, x.dtype)
        out: Tensor = torch.matmul(x, dense)
        return out if bias is None else out + bias

    def step_runner(self, module: nn.Module) -> StepRunner:
        if not self._enable_graphs:
            return HpuGraphStepRunner(module, wrapped=False, bypass_prefill=True)
        if not self._lazy:
            compiled = torch.compile(module, backend="hpu_backend", dynamic=False)
            return HpuGraphStepRunner(compiled, wrapped=False, bypass_prefill=True)
        from habana_frameworks.torch.hpu import wrap_in_hpu_graph

        wrapped = wrap_in_hpu_graph(module, disable_tensor_cache=True)
        return HpuGraphStepRunner(wrapped, wrapped=True, bypass_prefill=self._limit_graphs)

    def prepare_collectives(self) -> str:
        import habana_frameworks.torch.distributed.hccl  # noqa: F401 (registers "hccl")

        return super().prepare_collectives()

    def profiler_activities(self) -> list[torch.profiler.ProfilerActivity]:
        activities = [torch.profiler.ProfilerActivity.CPU]
        hpu_activity = getattr(torch.profiler.ProfilerActivity, "HPU", None)
        if hpu_activity is not None:
            activities.append(hpu_activity)
        return activities
