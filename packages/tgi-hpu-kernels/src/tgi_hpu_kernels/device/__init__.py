"""Device selection: the one place a backend is chosen, from ``RunnerSettings.device``.

``select_device("auto")`` picks an HPU when habana_frameworks sees one, else CUDA when
torch sees one, else the CPU. Everything else imports the returned ``Device`` and calls its
methods; nothing branches on the device name.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device.base import Device, MemoryInfo, StepRunner

__all__ = ["Device", "MemoryInfo", "StepRunner", "resolve_dtype", "select_device"]


def select_device(name: str = "auto", settings: RunnerSettings | None = None) -> Device:
    """Builds the backend named ``name`` ("auto", "cpu", "cuda" or "hpu").

    Args:
        name: the device; "auto" picks hpu > cuda > cpu by availability.
        settings: the runner settings whose device switches the backend honours
            (ENABLE_HPU_GRAPH, LIMIT_HPU_GRAPH, USE_FLASH_ATTENTION, FLASH_ATTENTION_RECOMPUTE,
            num_threads, disable_custom_kernels, cuda_graphs); defaults when None.

    Raises:
        ValueError: an unknown name, or a device that is not available here.
    """
    settings = settings or RunnerSettings()
    if name == "auto":
        from tgi_hpu_kernels.device.hpu import hpu_available

        name = "hpu" if hpu_available() else "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        from tgi_hpu_kernels.device.cpu import CpuDevice

        return CpuDevice(
            num_threads=settings.num_threads, use_native=not settings.disable_custom_kernels
        )
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
        from tgi_hpu_kernels.device.cuda import CudaDevice

        return CudaDevice(
            index=settings.local_rank % torch.cuda.device_count(),
            graphs=settings.enable_hpu_graph,
            graph_batch_sizes=settings.cuda_graphs,
        )
    if name == "hpu":
        from tgi_hpu_kernels.device.hpu import HpuDevice, hpu_available

        if not hpu_available():
            raise ValueError("device 'hpu' was asked for but habana_frameworks sees no Gaudi")
        return HpuDevice(
            enable_hpu_graph=settings.enable_hpu_graph,
            limit_hpu_graph=settings.limit_hpu_graph,
            use_flash_attention=settings.use_flash_attention,
            flash_attention_recompute=settings.flash_attention_recompute,
        )
    raise ValueError(f"unknown device {name!r}; expected one of: auto, cpu, cuda, hpu")


def resolve_dtype(settings: RunnerSettings, device: Device) -> RunnerSettings:
    """``settings`` with ``dtype="auto"`` replaced by ``device``'s choice (an explicit dtype
    is kept, even where it is slow: ``device.dtype_warning`` says why)."""
    if settings.dtype != "auto":
        return settings
    return replace(settings, dtype=device.default_dtype())
