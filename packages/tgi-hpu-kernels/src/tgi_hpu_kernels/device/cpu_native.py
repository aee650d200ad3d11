"""The CPU backend's native kernels: typed wrappers over the C library of ``csrc/``.

``native_kernels()`` builds the library on first use (``native_build.py``) and returns one
``NativeKernels``, or None (logged once) where no C compiler works; the CPU backend then keeps
its torch-op path. Each wrapper checks the layout its C function assumes, allocates the
output and passes data pointers through ctypes, which releases the GIL during the call.
Each call runs on ``torch.get_num_threads()`` OpenMP threads (torch's own pool).

What does not live here: building (``native_build.py``) and deciding when a kernel pays
(``cpu.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tgi_hpu_kernels.attention import PagedRows
from tgi_hpu_kernels.device.native_build import build_library, find_compiler, load_library
from tgi_hpu_kernels.layers.quantized import QuantizedWeight

__all__ = ["NATIVE_DTYPES", "NATIVE_MAX_HIDDEN", "NativeKernels", "native_kernels", "profiled"]

logger = logging.getLogger(__name__)

_DTYPES = {torch.bfloat16: "bf16", torch.float32: "f32"}
NATIVE_DTYPES = frozenset(_DTYPES)
_MAX_HEAD_DIM, _MAX_HEADS, _MAX_ROW = 256, 256, 16384  # MAX_* in csrc/common.h
NATIVE_MAX_HIDDEN = _MAX_ROW  # the widest row the native RMSNorm takes
_P, _I64, _INT, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
# Argument types of each function of both dtypes (the trailing thread count included).
_SIGNATURES = {
    "paged_attention": [
        *(_P, _I64) * 3,  # query, new keys, new values (pointer, row stride)
        *(_P, _I64),  # slots, rows
        *(_P, _P, _P, _I64),  # key cache, value cache, block tables (pointer, row stride)
        *(_P, _P, _P, _P),  # seq_lens, query_starts, query_lens, out
        *[_INT] * 6,  # sequences, heads, kv heads, head dim, block size, window
        *(_F32, _F32, _INT),  # scale, softcap (0: none), threads
    ],
    "rms_norm": [_P, _I64, _P, _P, _P, _INT, _INT, _F32, _INT],
    "silu_mul": [_P, _P, _INT, _INT, _INT],
    "rotary": [_P, _I64, _P, _P, _INT, _INT, _INT, _INT],
}
_LINEAR_ARGTYPES = [_P, _I64, _P, _P, _P, _I64, _INT, _INT, _INT, _INT]
# x (float32, or bf16 for the AMX ones), codes, scales(, mins), bias, y; rows, outputs,
# inputs, group, threads
_QUANT_ARGTYPES = {
    "linear_q4_f32": [_P, _I64, _P, _P, _P, _P, _P, _I64, *[_INT] * 5],
    "linear_q8_f32": [_P, _I64, _P, _P, _P, _P, _I64, *[_INT] * 5],
    "linear_q4_amx": [_P, _I64, _P, _P, _P, _P, _P, _I64, *[_INT] * 5],
    "linear_q8_amx": [_P, _I64, _P, _P, _P, _P, _I64, *[_INT] * 5],
    "dequantize_q4_f32": [_P, _P, _P, _P, *[_INT] * 4],
    "dequantize_q8_f32": [_P, _P, _P, *[_INT] * 4],
    "dequantize_q4_bf16": [_P, _P, _P, _P, *[_INT] * 4],
    "dequantize_q8_bf16": [_P, _P, _P, *[_INT] * 4],
}


class NativeKernels:
    """Typed wrappers over the loaded library; every call checks what the C code assumes."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.library = library
        self.path = path
        self._functions: dict[tuple[str, str], Any] = {}
        for name, argtypes in _SIGNATURES.items():
            for suffix in _DTYPES.values():
                self._functions[name, suffix] = _bind(library, f"{name}_{suffix}", argtypes)
        self._functions["linear", "bf16"] = _bind(library, "linear_bf16", _LINEAR_ARGTYPES)
        self._quant = {name: _bind(library, name, types) for name, types in _QUANT_ARGTYPES.items()}
        self.fast_bf16 = bool(_bind(library, "cpu_kernels_fast_bf16", [])())
        # Built with AMX and granted the tiles by the kernel (asked for here, once).
        self.amx = bool(_bind(library, "cpu_kernels_amx", [])())

    def _call(self, name: str, dtype: torch.dtype, *args: Any) -> None:
        function = self._functions[name, _DTYPES[dtype]]
        with profiled(f"native::{name}"):
            status = function(*args, torch.get_num_threads())
        if status != 0:
            raise ValueError(f"native {name} failed with status {status}")

    @staticmethod
    def supports(dtype: torch.dtype, *, num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
        """Whether ``paged_attention`` takes these sizes (the C code's limits)."""
        return (
            dtype in _DTYPES
            and num_kv_heads > 0
            and num_heads % num_kv_heads == 0
            and head_dim <= _MAX_HEAD_DIM
            and num_heads <= _MAX_HEADS
            and num_heads * head_dim <= _MAX_ROW
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
        """Writes this step's keys/values at ``slots``, then runs causal attention of the
        packed query rows over their paged keys/values, read in place.

        Args:
            query: ``[rows, heads, head_dim]``; key, value: ``[rows, kv_heads, head_dim]``
                (rows may be strided, heads contiguous).
            key_cache, value_cache: ``[blocks, block_size, kv_heads, head_dim]`` contiguous.
            slots: int64 ``[rows]`` cache slot of each row's key and value.
            paged: the int32 block tables, lengths and query rows of each sequence.
            sliding_window: a query attends to its last ``sliding_window`` keys only.
            softcap: scaled scores become ``softcap * tanh(score / softcap)`` (None: as is).

        Returns:
            ``[rows, heads * head_dim]`` in the query's dtype.
        """
        rows, heads, head_dim = query.shape
        _, block_size, kv_heads, _ = key_cache.shape
        query, key, value = (_heads_contiguous(t) for t in (query, key, value))
        if key.shape[0] != slots.shape[0] or slots.dtype != torch.int64:
            raise ValueError("paged_attention needs one int64 slot per new key")
        if not all(t.is_contiguous() for t in (key_cache, value_cache, slots, *paged)):
            raise ValueError("paged_attention needs contiguous caches, slots and tables")
        if any(t.dtype != torch.int32 for t in paged):
            raise ValueError("block tables, lengths and query rows must be int32")
        out = torch.empty((rows, heads * head_dim), dtype=query.dtype)
        self._call(
            "paged_attention",
            query.dtype,
            *(query.data_ptr(), query.stride(0), key.data_ptr(), key.stride(0)),
            *(value.data_ptr(), value.stride(0), slots.data_ptr(), slots.shape[0]),
            *(key_cache.data_ptr(), value_cache.data_ptr()),
            *(paged.block_tables.data_ptr(), paged.block_tables.stride(0)),
            *(paged.seq_lens.data_ptr(), paged.query_starts.data_ptr()),
            *(paged.query_lens.data_ptr(), out.data_ptr()),
            *(paged.seq_lens.shape[0], heads, kv_heads, head_dim, block_size),
            *(sliding_window or 0, scale, softcap or 0.0),
        )
        return out

    def rms_norm(
        self, x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None
    ) -> Tensor:
        """``rms_norm(x [+ residual]) * weight`` of ``[rows, hidden]`` rows (last dimension
        contiguous, weight's dtype); with a residual, ``residual`` becomes ``x + residual``
        in place (it must be contiguous and shaped like ``x``)."""
        rows, hidden = x.shape
        if x.stride(1) != 1 or weight.dtype != x.dtype or hidden > _MAX_ROW:
            raise ValueError("rms_norm needs [rows, hidden] rows in the weight's dtype")
        if residual is not None and (not residual.is_contiguous() or residual.shape != x.shape):
            raise ValueError("the residual must be a contiguous tensor shaped like x")
        out = torch.empty((rows, hidden), dtype=x.dtype)
        self._call(
            "rms_norm",
            x.dtype,
            x.data_ptr(),
            x.stride(0),
            None if residual is None else residual.data_ptr(),
            weight.contiguous().data_ptr(),
            out.data_ptr(),
            rows,
            hidden,
            eps,
        )
        return out

    def silu_and_mul(self, x: Tensor) -> Tensor:
        """``[rows, 2I]`` contiguous -> ``silu(x[:, :I]) * x[:, I:]``."""
        rows, width = x.shape
        if not x.is_contiguous():
            raise ValueError("silu_and_mul needs a contiguous input")
        out = torch.empty((rows, width // 2), dtype=x.dtype)
        self._call("silu_mul", x.dtype, x.data_ptr(), out.data_ptr(), rows, width // 2)
        return out

    def rotary_(self, x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
        """Rotates ``x`` ``[rows, heads, head_dim]`` (heads contiguous) in place by the
        ``[rows, 1, head_dim]`` tables; returns ``x``."""
        rows, heads, head_dim = x.shape
        if x.stride(2) != 1 or x.stride(1) != head_dim:
            raise ValueError("rotary_ needs contiguous heads")
        for table in (cos, signed_sin):
            if table.dtype != x.dtype or not table.is_contiguous() or table.shape[0] != rows:
                raise ValueError("rotary_ needs one contiguous table row per input row")
        self._call(
            "rotary",
            x.dtype,
            x.data_ptr(),
            x.stride(0),
            cos.data_ptr(),
            signed_sin.data_ptr(),
            rows,
            heads,
            head_dim,
        )
        return x

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """bf16 ``x @ weight.T + bias`` of ``[rows, inputs]`` rows (``inputs % 32 == 0``,
        last dimension contiguous) with a contiguous ``[outputs, inputs]`` weight."""
        rows, inputs = x.shape
        outputs = weight.shape[0]
        if not self.fast_bf16 or x.stride(1) != 1 or inputs % 32 or not weight.is_contiguous():
            raise ValueError("linear needs AVX512-BF16, contiguous rows and inputs % 32 == 0")
        if {x.dtype, weight.dtype} != {torch.bfloat16} or (
            bias is not None and bias.dtype != x.dtype
        ):
            raise ValueError("linear takes bf16 inputs, weights and bias")
        out = torch.empty((rows, outputs), dtype=x.dtype)
        self._call(
            "linear",
            x.dtype,
            x.data_ptr(),
            x.stride(0),
            weight.data_ptr(),
            None if bias is None else bias.contiguous().data_ptr(),
            out.data_ptr(),
            outputs,
            rows,
            outputs,
            inputs,
        )
        return out

    def quantized_linear(self, x: Tensor, weight: QuantizedWeight, bias: Tensor | None) -> Tensor:
        """``x @ dequantize(weight).T + bias`` of ``[rows, inputs]`` rows (last dimension
        contiguous). float32 rows: each weight row dequantized once and dotted with every row,
        float32 out. bf16 rows (``amx`` only), bf16 out: AMX tiles multiply them by the codes
        and each group's float32 sums are scaled (``linear_quant_amx.c``)."""
        rows, inputs = x.shape
        kernel = {torch.float32: "f32", torch.bfloat16: "amx"}.get(x.dtype)
        if kernel is None or x.stride(1) != 1 or inputs != weight.in_features:
            raise ValueError(
                "quantized_linear takes float32 or bf16 rows of the weight's input size"
            )
        if kernel == "amx" and not self.amx:
            raise ValueError("bf16 rows need the AMX kernel, which this CPU's build lacks")
        out = torch.empty((rows, weight.out_features), dtype=x.dtype)
        # Held for the whole call: a converted bias is a temporary the kernel still reads.
        bias32 = None if bias is None else bias.float().contiguous()
        mins = () if weight.mins is None else (weight.mins.data_ptr(),)
        self._call_quant(
            f"linear_q{weight.bits}_{kernel}",
            *(x.data_ptr(), x.stride(0), weight.codes.data_ptr(), weight.scales.data_ptr()),
            *mins,
            *(None if bias32 is None else bias32.data_ptr(), out.data_ptr(), weight.out_features),
            *(rows, weight.out_features, inputs, weight.group),
        )
        return out

    def dequantize(self, weight: QuantizedWeight, dtype: torch.dtype = torch.float32) -> Tensor:
        """The dense ``[outputs, inputs]`` matrix of ``weight``, float32, or bf16 rounded as
        ``.to(torch.bfloat16)`` rounds it."""
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dequantize writes float32 or bf16, not {dtype}")
        out = torch.empty((weight.out_features, weight.in_features), dtype=dtype)
        mins = () if weight.mins is None else (weight.mins.data_ptr(),)
        self._call_quant(
            f"dequantize_q{weight.bits}_{'f32' if dtype == torch.float32 else 'bf16'}",
            *(weight.codes.data_ptr(), weight.scales.data_ptr(), *mins, out.data_ptr()),
            *(weight.out_features, weight.in_features, weight.group),
        )
        return out

    def _call_quant(self, name: str, *args: Any) -> None:
        with profiled(f"native::{name}"):
            status = self._quant[name](*args, torch.get_num_threads())
        if status != 0:
            raise ValueError(f"native {name} failed with status {status}")


def profiled(label: str) -> contextlib.AbstractContextManager[Any]:
    """A torch.profiler range around a native call (PROF_* traces show ctypes calls only
    through these); nothing while no profiler runs."""
    if torch.autograd._profiler_enabled():  # type: ignore[attr-defined]  # cheap C check
        return torch.profiler.record_function(label)
    return contextlib.nullcontext()


def _heads_contiguous(t: Tensor) -> Tensor:
    """``[rows, heads, head_dim]`` with contiguous heads (rows may keep their stride)."""
    return t if t.stride(2) == 1 and t.stride(1) == t.shape[2] else t.contiguous()


def _bind(library: ctypes.CDLL, name: str, argtypes: list[Any]) -> Any:
    function = getattr(library, name)
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


@functools.cache
def native_kernels() -> NativeKernels | None:
    """The library, built on first use; None (logged once) where it cannot be built."""
    compiler = find_compiler()
    if compiler is None:
        logger.warning("no C compiler found: the CPU runs its kernels with torch ops (slower)")
        return None
    try:
        path = build_library(compiler)
        return NativeKernels(load_library(path), path)
    except (OSError, subprocess.CalledProcessError, AttributeError) as error:
        detail = getattr(error, "stderr", "") or error
        logger.warning("CPU kernels unavailable, using torch ops instead: %s", detail)
        return None
