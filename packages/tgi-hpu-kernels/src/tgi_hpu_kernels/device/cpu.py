"""The CPU backend: native kernels (``cpu_native.py``, ``cpu_fused.py``) where a C compiler
built them, torch ops otherwise (batched matmuls or SDPA for attention, oneDNN matmuls).

The CPU needs no static shapes: by default the runner packs prefill tokens without padding
(a 30-token prompt in a 128 bucket costs 30 tokens, not 128) and sizes decode block tables
to what the batch needs. ``static_shapes=True`` makes it pad exactly as HPU and CUDA do,
which the tests use to cover that path without an accelerator.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as nnf

from tgi_core.settings.slices import DType
from tgi_hpu_kernels.attention import AttentionMetadata, PagedRows
from tgi_hpu_kernels.device.base import (
    Device,
    MemoryInfo,
    decode_attention_bmm,
    prefill_attention_bmm,
    sdpa_attention,
)
from tgi_hpu_kernels.device.cpu_features import (
    CpuFeatures,
    choose_dtype,
    dtype_warning,
    host_cpu_features,
)
from tgi_hpu_kernels.device.cpu_fused import FusedStack
from tgi_hpu_kernels.device.cpu_native import (
    NATIVE_DTYPES,
    NATIVE_MAX_HIDDEN,
    NativeKernels,
    native_kernels,
)
from tgi_hpu_kernels.kv_cache import KVCache
from tgi_hpu_kernels.layers.kernels import DecoderLayerSpec
from tgi_hpu_kernels.layers.quantized import QuantizedKernels, QuantizedWeight

__all__ = ["CpuDevice"]

_MEMINFO = Path("/proc/meminfo")
# Rows up to which the native bf16 linear kernel beats oneDNN: it streams the weights once for
# up to 4 rows, then adds a pass per 4 rows. With AVX512-BF16 alone oneDNN only catches up at
# 32 rows; with AMX tiles its GEMM is 1.3x faster at 6-8 rows and 3x at 32. The fused decode
# layer calls the native kernel but saves the per-op path's Python, which pays up to 12 rows
# with AMX (SmolLM2 step at 12 rows: 34 ms fused, 38 per op; 16: even; 32: 78 against 54).
NATIVE_LINEAR_MAX_ROWS = 32
NATIVE_LINEAR_MAX_ROWS_AMX = 4
FUSED_MAX_ROWS_AMX = 12
# Rows up to which the quantized kernel beats dequantize-then-GEMM (measured: README).
QUANTIZED_NATIVE_MAX_ROWS = 32
# Rows from which, with AMX and bf16 activations, the tile kernels beat both: whole SmolLM2
# int4 decode steps even at 12 rows, 1.1x at 16, 1.15x at 32 (README).
QUANTIZED_AMX_MIN_ROWS = 12
# Rows from which the weights dequantized to bf16 and oneDNN's GEMM beat the tile kernel:
# SmolLM2's projections even at 96 rows, 1.2x at 128, 1.7x at 512 (README).
QUANTIZED_BF16_GEMM_MIN_ROWS = 96
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
    """Runs on host memory. With a C compiler at hand, attention, the elementwise kernels and
    decode-sized bf16 matmuls run on the native kernels (``cpu_native.py``), and bf16 decode
    steps of up to 32 rows (12 with AMX and dense weights) run each layer in one native call
    (``cpu_fused.py``), int4/int8 weights included; otherwise torch ops (oneDNN for bf16
    matmuls).

    Args:
        static_shapes: pad to the buckets as HPU and CUDA do (tests of that path).
        num_threads: torch's (and the native kernels') thread count.
        use_native: use the native kernels when they build (False: torch ops only).
        use_fused: run bf16 decode steps through the fused decoder stack.
        features: the CPU's features (default: this host's, ``cpu_features.py``), which
            choose the default dtype.
    """

    name = "cpu"
    collective_backend = "gloo"
    # Half of the available RAM at most: the host also runs the server, tokenizers, etc.
    kv_memory_fraction = 0.5
    caps_kv_pool = True

    def __init__(
        self,
        *,
        static_shapes: bool = False,
        num_threads: int | None = None,
        use_native: bool = True,
        use_fused: bool = True,
        features: CpuFeatures | None = None,
    ) -> None:
        super().__init__(torch.device("cpu"))
        self.features = features or host_cpu_features()
        self.needs_static_shapes = static_shapes
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self._native: NativeKernels | None = native_kernels() if use_native else None
        native = self._native
        self.native_linear_max_rows = (
            NATIVE_LINEAR_MAX_ROWS_AMX if self.features.amx else NATIVE_LINEAR_MAX_ROWS
        )
        self.fused_max_rows = FUSED_MAX_ROWS_AMX if self.features.amx else NATIVE_LINEAR_MAX_ROWS
        self._fused = (
            FusedStack(native.library.decoder_layer_bf16)
            if native is not None and native.fast_bf16 and use_fused
            else None
        )

    @property
    def native(self) -> NativeKernels | None:
        """The native kernels in use (None: torch ops only)."""
        return self._native

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
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None,
        scale: float,
        *,
        softcap: float | None = None,
    ) -> Tensor:
        # bf16/fp16 grids up to 512 x 512: matmuls beat SDPA's flash kernel 2x; beyond, the
        # materialised scores cost more than they save, and float32 SDPA is as fast. SDPA
        # cannot soft-cap scores: those always take the matmuls.
        small = query.dtype != torch.float32 and query.shape[2] * key.shape[2] <= _BMM_PREFILL_CELLS
        if small or softcap is not None:
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
        return decode_attention_bmm(query, key, value, mask, scale, softcap=softcap)

    @contextmanager
    def matmul_context(self, num_rows: int) -> Iterator[None]:
        # Without the native linear kernel: at one row torch's own bf16 GEMV streams weights
        # at ~23 GB/s, oneDNN's at ~14 GB/s (1.6x faster batch-1 decode); from two rows on,
        # oneDNN's GEMM wins by far.
        native = self._native is not None and self._native.fast_bf16
        if num_rows != 1 or native or not torch.backends.mkldnn.enabled:
            yield
            return
        torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a ContextProp
        try:
            yield
        finally:
            torch.backends.mkldnn.enabled = True  # type: ignore[assignment]

    def reads_paged_kv(
        self, dtype: torch.dtype, *, num_heads: int, num_kv_heads: int, head_dim: int
    ) -> bool:
        native = self._native
        return native is not None and native.supports(
            dtype, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim
        )

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
        # One native call writes the new K/V and reads each sequence's blocks in place: no
        # per-layer gather copy, no padded grid, no materialised scores.
        call = self._native.paged_attention if self._native is not None else super().paged_attention
        return call(
            query,
            key,
            value,
            key_cache=key_cache,
            value_cache=value_cache,
            slots=slots,
            paged=paged,
            scale=scale,
            sliding_window=sliding_window,
            softcap=softcap,
        )

    # -- layer kernels: one native pass each instead of several torch ops ----------------

    def decoder_stack(
        self,
        layers: Sequence[DecoderLayerSpec],
        hidden: Tensor,
        rope: tuple[Tensor, Tensor],
        attn: AttentionMetadata,
        kv: KVCache,
    ) -> tuple[Tensor, Tensor] | None:
        # Decode-sized bf16 steps: one native call per layer instead of a dozen (a third of
        # a small batch's step was Python and per-call argument handling). Up to the row
        # limit of the projections' kernel: the bf16 one's (with AMX, as far as the saved
        # Python pays for it), or the quantized one's.
        fused = self._fused
        if (
            fused is None
            or attn.paged is None
            or hidden.dtype != torch.bfloat16
            or kv.keys[0].dtype != torch.bfloat16
        ):
            return None
        layout = fused.layout(layers, hidden)
        max_rows = QUANTIZED_NATIVE_MAX_ROWS if layout == "quantized" else self.fused_max_rows
        if layout is None or hidden.shape[0] > max_rows:
            return None
        quantized_amx = layout == "quantized" and self.quantized_amx(hidden)
        return fused.run(layers, hidden, rope, attn, kv, quantized_amx=quantized_amx)

    def _native_for(self, x: Tensor) -> NativeKernels | None:
        native = self._native
        return native if native is not None and x.dtype in NATIVE_DTYPES else None

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        native = self._native_for(x)
        if native is None or not _norm_rows(x, weight):
            return super().rms_norm(x, weight, eps)
        return native.rms_norm(x, weight, eps)

    def add_rms_norm(
        self, x: Tensor, residual: Tensor, weight: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        native = self._native_for(x)
        if (
            native is None
            or not _norm_rows(x, weight)
            or x.shape != residual.shape
            or not residual.is_contiguous()
        ):
            return super().add_rms_norm(x, residual, weight, eps)
        return native.rms_norm(x, weight, eps, residual), residual

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        native = self._native
        if native is None or not _native_linear(native, x, weight, self.native_linear_max_rows):
            return super().linear(x, weight, bias)
        return native.linear(x, weight, bias)

    def quantized_linear(self, x: Tensor, weight: QuantizedWeight, bias: Tensor | None) -> Tensor:
        # bf16 rows from QUANTIZED_AMX_MIN_ROWS on, with AMX: the tile kernel, exact; from
        # QUANTIZED_BF16_GEMM_MIN_ROWS on (prefill) the weights dequantized to bf16 for
        # oneDNN's GEMM, which then computes what the dense bf16 model computes.
        # Otherwise decode-sized steps: the native kernel reads the codes once and dots each
        # dequantized row with every input row. Prefill-sized ones: one dense float32 copy of
        # the weights, then a BLAS GEMM, which the per-row dots cannot match at hundreds of rows.
        native = self._native
        if native is None or x.dim() != 2 or not x.shape[0]:
            return super().quantized_linear(x, weight, bias)
        if self.quantized_amx(x):
            if x.shape[0] >= QUANTIZED_BF16_GEMM_MIN_ROWS:
                return nnf.linear(x, native.dequantize(weight, torch.bfloat16), bias)
            return native.quantized_linear(x.contiguous(), weight, bias)
        rows = x.float().contiguous()
        if x.shape[0] <= QUANTIZED_NATIVE_MAX_ROWS:
            out = native.quantized_linear(rows, weight, bias)
        else:
            dense_bias = None if bias is None else bias.float()
            out = nnf.linear(rows, native.dequantize(weight), dense_bias)
        return out.to(x.dtype)

    def quantized_amx(self, x: Tensor) -> bool:
        """Whether ``quantized_linear`` (and the fused layer's projections) take ``x``'s rows
        to the AMX path: the tile kernel, or from QUANTIZED_BF16_GEMM_MIN_ROWS the bf16 GEMM."""
        native = self._native
        return (
            native is not None
            and native.amx
            and x.dtype == torch.bfloat16
            and x.shape[0] >= QUANTIZED_AMX_MIN_ROWS
        )

    def silu_and_mul(self, x: Tensor) -> Tensor:
        native = self._native_for(x)
        if native is None or x.dim() != 2 or not x.is_contiguous():
            return super().silu_and_mul(x)
        return native.silu_and_mul(x)

    def rotary(self, x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
        native = self._native_for(x)
        if native is None or cos.dtype != x.dtype or cos.shape[0] != x.shape[0]:
            return super().rotary(x, cos, signed_sin)
        return native.rotary_(x, cos, signed_sin)

    @property
    def quantized_kernels(self) -> QuantizedKernels:
        # native ones; torch's dequantize-then-matmul without a C compiler
        return QuantizedKernels(self.name, frozenset((4, 8)))

    def serves_gguf_quantized(self, dtype: torch.dtype) -> bool:
        # Measured (README): the codes beat float32 weights at every batch, and with AMX
        # dense bf16 ones too (prefill level); with AVX512-BF16 alone dense bf16 stays.
        native = self._native
        return native is not None and (
            dtype != torch.bfloat16 or not native.fast_bf16 or native.amx
        )

    def default_dtype(self) -> DType:
        return choose_dtype(self.features, None)

    def dtype_warning(self, dtype: str) -> str | None:
        return dtype_warning(self.features, dtype)

    @property
    def kernels(self) -> str:
        """Which kernels run: the native ones (built with ``-march=native`` for this CPU;
        AVX-512 BF16 bf16 matmuls and the fused decode where it has them), or torch ops."""
        native = self._native
        if native is None:
            return "torch ops"
        if not native.fast_bf16:
            return "native kernels (portable C; bf16 matmuls on torch)"
        onednn = "oneDNN (AMX)" if self.features.amx else "oneDNN"
        kernels = f"avx512_bf16 matmuls up to {self.native_linear_max_rows} rows, {onednn} above"
        if self._fused:
            kernels += f", fused decode up to {self.fused_max_rows} rows"
            if self.fused_max_rows != QUANTIZED_NATIVE_MAX_ROWS:
                kernels += f" ({QUANTIZED_NATIVE_MAX_ROWS} with int4/int8 weights)"
        if native.amx:
            kernels += (
                f", int4/int8 on AMX tiles from {QUANTIZED_AMX_MIN_ROWS} rows (dequantized "
                f"to bf16 for oneDNN from {QUANTIZED_BF16_GEMM_MIN_ROWS})"
            )
        return f"native kernels ({kernels})"

    def describe(self) -> str:
        mode = "static shapes" if self.needs_static_shapes else "packed prefill"
        return (
            f"cpu ({torch.get_num_threads()} threads, {mode}, {self.kernels}; "
            f"{self.features.describe()}, torch {self.features.torch_capability or '?'})"
        )


def _norm_rows(x: Tensor, weight: Tensor) -> bool:
    """What the native RMSNorm takes: ``[rows, hidden]`` rows (last dimension contiguous) of
    the weight's dtype, ``hidden`` within its limit."""
    return (
        x.dim() == 2
        and x.stride(1) == 1
        and weight.dtype == x.dtype
        and x.shape[1] <= NATIVE_MAX_HIDDEN
    )


def _native_linear(native: NativeKernels, x: Tensor, weight: Tensor, max_rows: int) -> bool:
    """Decode-sized bf16 matmuls, up to ``max_rows`` (see ``NATIVE_LINEAR_MAX_ROWS``): there
    the native kernel streams the weights at the memory bandwidth; beyond, oneDNN's GEMM is
    as fast or faster."""
    return (
        native.fast_bf16
        and x.dtype == torch.bfloat16
        and weight.dtype == torch.bfloat16
        and x.dim() == 2
        and x.shape[0] <= max_rows
        and x.stride(1) == 1
        and x.shape[1] % 32 == 0
        and weight.is_contiguous()
    )
