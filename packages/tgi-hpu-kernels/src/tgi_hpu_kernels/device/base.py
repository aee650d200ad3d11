"""The device interface: everything the runner and the attention code may ask of a backend.

One backend (``cpu.py``, ``cuda.py`` or ``hpu.py``) is chosen once by
``tgi_hpu_kernels.device.select_device``; no other module asks which one it is. This module
holds the interface and the defaults written with plain torch; it imports no vendor library.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from tgi_core.settings.slices import DType
from tgi_hpu_kernels.attention import PagedRows
from tgi_hpu_kernels.layers.kernels import TorchLayerKernels
from tgi_hpu_kernels.layers.quantized import QuantizedKernels

__all__ = [
    "Device",
    "MemoryInfo",
    "StepRunner",
    "decode_attention_bmm",
    "paged_attention_gather",
    "prefill_attention_bmm",
    "sdpa_attention",
]


@dataclass(frozen=True, slots=True)
class MemoryInfo:
    """Free and total memory of the device, in bytes."""

    free_bytes: int
    total_bytes: int


class StepRunner(Protocol):
    """Runs the model's step module on a batch, through a captured graph where there is one.

    ``args`` are the step module's positional arguments (tensors, ``None`` and tuples of
    them); graphs are keyed by their shapes, so one graph serves every call of one bucket.
    """

    @property
    def num_graphs(self) -> int: ...

    def __call__(self, args: tuple[Any, ...], *, is_prefill: bool) -> Tensor: ...


class EagerStepRunner:
    """Calls the module directly: no graphs (the CPU, or graphs switched off)."""

    def __init__(self, module: Callable[..., Tensor]) -> None:
        self._module = module

    @property
    def num_graphs(self) -> int:
        return 0

    def __call__(self, args: tuple[Any, ...], *, is_prefill: bool) -> Tensor:
        return self._module(*args)


def sdpa_attention(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float
) -> Tensor:
    """torch's fused SDPA with grouped KV heads.

    Args:
        query: ``[b, heads, q_len, head_dim]``.
        key, value: ``[b, kv_heads, k_len, head_dim]`` (may be strided views).
        mask: boolean ``[b | 1, 1, q_len, k_len]`` (True = attend), or None for causal
            attention of ``q_len`` queries over the same ``k_len == q_len`` keys.
        scale: the softmax scale.

    Returns:
        ``[b, heads, q_len, head_dim]``.
    """
    return nnf.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
        enable_gqa=query.shape[1] != key.shape[1],
    )


def _scores(q: Tensor, key: Tensor, scale: float, softcap: float | None) -> Tensor:
    """float32 ``q @ key^T * scale``, soft-capped as ``softcap * tanh(s / softcap)`` if set."""
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale
    return scores if softcap is None else torch.tanh(scores / softcap) * softcap


def decode_attention_bmm(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor,
    scale: float,
    *,
    softcap: float | None = None,
) -> Tensor:
    """One query token per sequence, as two batched matmuls (no fused kernel needed).

    The grouped query heads of one KV head are stacked as rows, so GQA costs no KV copy.
    On the CPU this is ~25x faster in bf16 than SDPA's q_len == 1 path (torch 2.13).
    Arguments as ``sdpa_attention`` with ``q_len == 1`` and ``mask`` of ``[b, 1, 1, k_len]``;
    ``softcap`` caps the scaled scores (Gemma 2), which SDPA cannot.
    """
    b, num_heads, _, head_dim = query.shape
    num_kv_heads, k_len = key.shape[1], key.shape[2]
    group = num_heads // num_kv_heads
    q = query.reshape(b, num_kv_heads, group, head_dim)
    scores = _scores(q, key, scale, softcap)  # [b, kv_heads, group, k_len]
    scores = torch.where(mask.view(b, 1, 1, k_len), scores, -math.inf)
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs.to(value.dtype), value)  # [b, kv_heads, group, head_dim]
    return out.view(b, num_heads, 1, head_dim)


def paged_attention_gather(
    query: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    paged: PagedRows,
    *,
    scale: float,
    sliding_window: int | None,
    softcap: float | None = None,
) -> Tensor:
    """``Device.paged_attention`` with torch ops: every query row gathers its sequence's
    keys and attends as a decode row (``decode_attention_bmm``). Memory grows with rows x
    keys: the reference the native kernels are tested against, not a fast path.

    Args:
        query: ``[rows, heads, head_dim]``.
        key_cache, value_cache: ``[blocks, block_size, kv_heads, head_dim]``.
        paged: block tables, lengths and query rows of each sequence.
        sliding_window: a query attends to its last ``sliding_window`` keys only (None: all).
        softcap: caps the scaled scores as ``softcap * tanh(score / softcap)`` (None: as is).

    Returns:
        ``[rows, heads * head_dim]``.
    """
    rows, heads, head_dim = query.shape
    _, block_size, kv_heads, _ = key_cache.shape
    lens = paged.query_lens.long()
    seq_of_row = torch.repeat_interleave(torch.arange(lens.shape[0], device=query.device), lens)
    first = (paged.seq_lens.long() - lens)[seq_of_row]
    offset = torch.arange(rows, device=query.device) - paged.query_starts.long()[seq_of_row]
    position = (first + offset)[:, None]  # [rows, 1]
    key_pos = torch.arange(int(paged.seq_lens.max()), device=query.device)
    tables = paged.block_tables.long()[seq_of_row]
    slots = tables[:, key_pos // block_size] * block_size + key_pos % block_size
    keys = key_cache.view(-1, kv_heads, head_dim)[slots].transpose(1, 2)
    values = value_cache.view(-1, kv_heads, head_dim)[slots].transpose(1, 2)
    mask = key_pos[None, :] <= position
    if sliding_window is not None:
        mask &= key_pos[None, :] > position - sliding_window
    out = decode_attention_bmm(
        query[:, :, None], keys, values, mask[:, None, None], scale, softcap=softcap
    )
    return out.reshape(rows, heads * head_dim)


def prefill_attention_bmm(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    scale: float,
    *,
    softcap: float | None = None,
) -> Tensor:
    """Several queries per sequence as two batched matmuls; arguments as ``sdpa_attention``,
    and ``softcap`` as ``decode_attention_bmm``'s.

    Materialises the ``[b, heads, q_len, k_len]`` scores, so it suits short grids only; there
    it is ~2x faster than the CPU's bf16 SDPA kernel (torch 2.13).
    """
    b, num_heads, q_len, head_dim = query.shape
    num_kv_heads, k_len = key.shape[1], key.shape[2]
    group = num_heads // num_kv_heads
    if mask is None:  # causal over the grid
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril()
    q = query.reshape(b, num_kv_heads, group * q_len, head_dim)
    scores = _scores(q, key, scale, softcap).view(b, num_kv_heads, group, q_len, k_len)
    scores = torch.where(mask.view(-1, 1, 1, q_len, k_len), scores, -math.inf)
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs.view(b, num_kv_heads, group * q_len, k_len), value)
    return out.view(b, num_heads, q_len, head_dim)


class Device(TorchLayerKernels, ABC):
    """A compute backend. Subclasses set the class attributes and override what differs.

    It is also what models are built with: its attention methods and, inherited from
    ``TorchLayerKernels``, the elementwise kernels of a decoder layer."""

    name: str = ""
    collective_backend: str = ""
    needs_static_shapes: bool = True
    # Share of free memory the KV pool may take when the runner sizes it (TGI_WIGGLE_ROOM).
    kv_memory_fraction: float = 0.9
    # Whether the pool is capped at what the batch limits can use (see memory.py).
    caps_kv_pool: bool = False

    def __init__(self, torch_device: torch.device) -> None:
        self._torch_device = torch_device

    @property
    def torch_device(self) -> torch.device:
        return self._torch_device

    @abstractmethod
    def synchronize(self) -> None:
        """Waits for queued device work."""

    @abstractmethod
    def memory_info(self) -> MemoryInfo:
        """Free and total memory the KV cache can be sized from."""

    def kv_budget_bytes(self, memory_fraction: float) -> int:
        """Bytes the KV pool may take now: ``free x kv_memory_fraction x memory_fraction``."""
        free = self.memory_info().free_bytes
        return int(free * self.kv_memory_fraction * memory_fraction)

    def mark_step(self) -> None:
        """Ends a lazy-mode graph (HPU); a no-op elsewhere."""

    def empty_cache(self) -> None:
        """Returns cached allocator blocks to the device."""

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
        """Attention of several queries per sequence; see ``sdpa_attention`` (soft-capped
        scores, which SDPA cannot compute: ``prefill_attention_bmm``)."""
        if softcap is not None:
            return prefill_attention_bmm(query, key, value, mask, scale, softcap=softcap)
        return sdpa_attention(query, key, value, mask, scale)

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
        """Attention of one query per sequence over its gathered KV blocks."""
        if softcap is not None:
            return decode_attention_bmm(query, key, value, mask, scale, softcap=softcap)
        return sdpa_attention(query, key, value, mask, scale)

    def reads_paged_kv(
        self, dtype: torch.dtype, *, num_heads: int, num_kv_heads: int, head_dim: int
    ) -> bool:
        """Whether attention reads the paged cache in place (``paged_attention``) instead of
        gathering rows (decode, cached prefixes) or regrouping tokens into a padded grid
        (prefill); the runner then builds ``PagedRows`` for its packed steps."""
        return False

    def paged_attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        key_cache: Tensor,
        value_cache: Tensor,
        slots: Tensor,
        paged: PagedRows,
        scale: float,
        sliding_window: int | None,
        softcap: float | None = None,
    ) -> Tensor:
        """Writes the step's keys/values at ``slots``, then causal attention of the packed
        query rows over the paged cache (see ``paged_attention_gather``)."""
        kv_heads, head_dim = key_cache.shape[2:]
        key_cache.view(-1, kv_heads, head_dim).index_copy_(0, slots, key)
        value_cache.view(-1, kv_heads, head_dim).index_copy_(0, slots, value)
        return paged_attention_gather(
            query,
            key_cache,
            value_cache,
            paged,
            scale=scale,
            sliding_window=sliding_window,
            softcap=softcap,
        )

    def matmul_context(self, num_rows: int) -> contextlib.AbstractContextManager[None]:
        """Wraps work whose matmuls have ``num_rows``-row activations (a step's forward, the
        LM head): where a device's library has a better kernel for that size, this is where
        it switches to it. A no-op by default."""
        return contextlib.nullcontext()

    def step_runner(self, module: nn.Module) -> StepRunner:
        """Wraps the step module for graph capture/replay where the device has graphs."""
        return EagerStepRunner(module)

    def profiler_activities(self) -> list[torch.profiler.ProfilerActivity]:
        return [torch.profiler.ProfilerActivity.CPU]

    def prepare_collectives(self) -> str:
        """The torch.distributed backend of this device's process group, registered with
        torch where it needs registering (hccl); what ``TensorParallelGroup.join`` takes."""
        if not self.collective_backend:
            raise ValueError(f"{self.name} has no collective backend: it cannot be sharded")
        return self.collective_backend

    def default_dtype(self) -> DType:
        """The compute dtype when ``--dtype`` is unset (TGI-Gaudi: "all models run with
        BF16"); a device whose hardware lacks bf16 picks another."""
        return "bfloat16"

    def dtype_warning(self, dtype: str) -> str | None:
        """Why ``dtype`` runs slowly on this device, if it does (logged once by the runner)."""
        return None

    @property
    def quantized_kernels(self) -> QuantizedKernels:
        """The weight-only int8/int4 layers a kernel of this device runs (a width without
        one is refused at start-up: dequantizing every step is no service)."""
        return QuantizedKernels(self.name)

    def serves_gguf_quantized(self, dtype: torch.dtype) -> bool:
        """Whether a quantized GGUF runs faster kept quantized than dequantized to ``dtype``."""
        return False

    def describe(self) -> str:
        return self.name
