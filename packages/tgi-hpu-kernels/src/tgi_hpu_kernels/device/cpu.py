"""The CPU backend: batched matmuls or SDPA for attention, oneDNN for bf16 matmuls.

The CPU needs no static shapes: by default the runner packs prefill tokens without padding
(a 30-token prompt in a 128 bucket costs 30 tokens, not 128) and sizes decode block tables
to what the batch needs. ``static_shapes=True`` makes it pad exactly as HPU and CUDA do,
which the tests use to cover that path without an accelerator.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from tgi_hpu_kernels.device.base import (
    Device,
    MemoryInfo,
    decode_attention_bmm,
    prefill_attention_bmm,
    sdpa_attention,
)

__all__ = ["CpuDevice"]

_MEMINFO = Path("/proc/meminfo")
_BMM_PREFILL_CELLS = 512 * 512


def _meminfo_bytes(field: str) -> int | None:
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class CpuDevice(Device):
    """Runs on host memory; bf16 matmuls go through oneDNN where the CPU has AVX512-BF16/AMX."""

    name = "cpu"
    collective_backend = "gloo"
    # Half of the available RAM at most: the host also runs the server, tokenizers, etc.
    kv_memory_fraction = 0.5
    caps_kv_pool = True

    def __init__(self, *, static_shapes: bool = False, num_threads: int | None = None) -> None:
        super().__init__(torch.device("cpu"))
        self.needs_static_shapes = static_shapes
        if num_threads is not None:
            torch.set_num_threads(num_threads)

    def synchronize(self) -> None:
        """Nothing to wait for: CPU ops run synchronously."""

    def memory_info(self) -> MemoryInfo:
        total = _meminfo_bytes("MemTotal")
        free = _meminfo_bytes("MemAvailable")
        if total is None or free is None:  # not Linux: ask POSIX
            page = os.sysconf("SC_PAGE_SIZE")
            total = os.sysconf("SC_PHYS_PAGES") * page
            free = os.sysconf("SC_AVPHYS_PAGES") * page
        return MemoryInfo(free_bytes=free, total_bytes=total)

    def prefill_attention(
        self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float
    ) -> Tensor:
        # bf16/fp16 grids up to 512 x 512: matmuls beat SDPA's flash kernel 2x; beyond, the
        # materialised scores cost more than they save, and float32 SDPA is as fast.
        if query.dtype != torch.float32 and query.shape[2] * key.shape[2] <= _BMM_PREFILL_CELLS:
            return prefill_attention_bmm(query, key, value, mask, scale)
        return sdpa_attention(query, key, value, mask, scale)

    def decode_attention(
        self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor, scale: float
    ) -> Tensor:
        return decode_attention_bmm(query, key, value, mask, scale)

    def describe(self) -> str:
        mode = "static shapes" if self.needs_static_shapes else "packed prefill"
        return f"cpu ({torch.get_num_threads()} threads, {mode})"
