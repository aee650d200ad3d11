"""What the host CPU can do, read once at start-up, and the compute dtype that follows.

The flags come from ``/proc/cpuinfo`` (Linux); torch's own probe
(``torch.backends.cpu.get_cpu_capability()``: "AVX512", "AVX2", ...) fills in where that
file is missing and is logged beside them as a cross-check. bf16 is native only with
AVX-512 BF16 or AMX-BF16: elsewhere torch emulates it (measured on an AVX2-only Zen 3: bf16
decode at 32 streams 2.5x slower than float32), so an unset ``--dtype`` means float32 there.

What does not live here: the kernels themselves (``cpu_native.py``, built for the running
CPU by ``native_build.py``) and when they are used (``cpu.py``).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from tgi_core.settings.slices import DType

__all__ = ["CpuFeatures", "choose_dtype", "dtype_warning", "host_cpu_features"]

_CPUINFO = Path("/proc/cpuinfo")
# The flags that change which kernels and dtype pay, in /proc/cpuinfo's spelling.
KNOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
_NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})
# torch's capability names, mapped to the flags each implies.
_TORCH_IMPLIES = {
    "AVX2": ("avx2", "fma"),
    "AVX512": ("avx2", "fma", "avx512f"),
    "AVX512_BF16": ("avx2", "fma", "avx512f", "avx512_bf16"),
    "AMX": ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"),
}


@dataclass(frozen=True, slots=True)
class CpuFeatures:
    """The CPU's model name, the ``KNOWN_FLAGS`` it has, and torch's capability string."""

    model: str
    flags: frozenset[str]
    torch_capability: str = ""

    @property
    def native_bf16(self) -> bool:
        """bf16 matmuls in hardware (AVX-512 BF16 or AMX), not emulated through float32."""
        return bool(self.flags & _NATIVE_BF16)

    @property
    def amx(self) -> bool:
        """AMX bf16 tiles, which oneDNN's matmuls use (its ``brg_matmul:..._amx`` kernels)."""
        return {"amx_bf16", "amx_tile"} <= self.flags

    def describe(self) -> str:
        """``model [flag flag ...]`` in ``KNOWN_FLAGS`` order (the log line's and /info's)."""
        flags = " ".join(flag for flag in KNOWN_FLAGS if flag in self.flags) or "none"
        return f"{self.model} [{flags}]"

    @classmethod
    def parse(cls, cpuinfo: str, torch_capability: str = "") -> CpuFeatures:
        """From ``/proc/cpuinfo``'s text (its first processor), torch's probe as a fallback."""
        model, flags = "", set[str]()
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split()) & set(KNOWN_FLAGS)
        if not flags:  # no /proc/cpuinfo (macOS, containers hiding it): trust torch
            flags = set(_TORCH_IMPLIES.get(torch_capability, ()))
        return cls(
            model=model or platform.processor() or platform.machine(),
            flags=frozenset(flags),
            torch_capability=torch_capability,
        )


@functools.cache
def host_cpu_features() -> CpuFeatures:
    """This machine's features, read once per process."""
    try:
        text = _CPUINFO.read_text()
    except OSError:
        text = ""
    return CpuFeatures.parse(text, torch.backends.cpu.get_cpu_capability())


def choose_dtype(features: CpuFeatures, requested: DType | None) -> DType:
    """The compute dtype: the one asked for, else bfloat16 where the CPU has it natively,
    else float32 (emulated bf16 is slower than float32 compute, see the module doc)."""
    if requested is not None:
        return requested
    return "bfloat16" if features.native_bf16 else "float32"


def dtype_warning(features: CpuFeatures, dtype: str) -> str | None:
    """What to warn about when ``dtype`` is emulated on this CPU (None: nothing)."""
    if dtype != "bfloat16" or features.native_bf16:
        return None
    return (
        f"--dtype bfloat16 on a CPU without native bf16 ({features.describe()}): torch "
        "emulates it through float32, expect ~2.5x slower batched decode than --dtype "
        "float32 (the default on this CPU)"
    )
