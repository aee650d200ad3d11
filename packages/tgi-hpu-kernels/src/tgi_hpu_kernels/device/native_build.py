"""Building and loading the CPU's native kernels (the C sources in ``csrc/``).

The sources are compiled with the system C compiler (``cc -O3 -march=native -fopenmp``) the
first time a process asks for them, into a per-user cache folder keyed by the sources, the
compiler and the CPU, and loaded with ctypes. The library's OpenMP runtime is the one torch
already loaded (same ``libgomp.so.1`` soname), so its threads are torch's. Concurrent
processes build into temporary files and rename, so none ever loads a partial library.

What does not live here: the typed wrappers (``cpu_native.py``) and when the CPU backend
uses them (``cpu.py``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["SOURCES", "build_library", "find_compiler", "load_library"]

_FOLDER = Path(__file__).with_name("csrc")
SOURCES = tuple(
    _FOLDER / name
    for name in (
        "attention.c",
        "elementwise.c",
        "linear.c",
        "linear_quant.c",
        "linear_quant_amx.c",
        "layer.c",
    )
)
_HEADERS = (_FOLDER / "common.h",)
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")


def find_compiler() -> str | None:
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags")
    return "\n".join(sorted({line for line in lines if line.startswith(wanted)}))


def _digest(compiler: str, flags: tuple[str, ...]) -> str:
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    parts = [path.read_text() for path in (*SOURCES, *_HEADERS)]
    parts += [compiler, version, " ".join(flags), _cpu_signature()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _cache_folder() -> Path:
    """A per-user folder under the temp dir; one another user owns or may write to is never
    trusted (it could hold a planted library): a fresh private folder replaces it."""
    folder = Path(tempfile.gettempdir()) / f"tgi-hpu-kernels-{os.getuid()}"
    try:
        info = folder.lstat()
    except FileNotFoundError:
        return folder
    if info.st_uid == os.getuid() and folder.is_dir() and not info.st_mode & 0o022:
        return folder
    return Path(tempfile.mkdtemp(prefix="tgi-hpu-kernels-"))


def build_library(
    compiler: str, *, extra_flags: tuple[str, ...] = (), folder: Path | None = None
) -> Path:
    """Compiles the sources unless a build for them, the compiler, flags and CPU is cached.

    Raises:
        subprocess.CalledProcessError: the compiler failed (its output is in ``stderr``).
    """
    flags = (*_FLAGS, *extra_flags)
    folder = folder or _cache_folder()
    target = folder / f"cpu_kernels-{_digest(compiler, flags)}.so"
    if target.exists():
        return target
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=folder, suffix=".so")
    os.close(fd)
    try:
        command = [compiler, *flags, "-o", partial, *map(str, SOURCES), "-lm"]
        subprocess.run(command, capture_output=True, text=True, check=True)
        Path(partial).replace(target)
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


def load_library(path: Path) -> ctypes.CDLL:
    """Loads a built library; torch must be imported first (its OpenMP runtime is shared)."""
    import torch  # noqa: F401 (loads torch's libgomp before the library asks for one)

    return ctypes.CDLL(str(path))
