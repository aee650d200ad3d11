"""Shared fixtures: tiny random checkpoints (built once per session) and runners over them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_hpu_kernels.testing import Family, save_tiny_checkpoint

TinyCheckpoint = Callable[[Family], tuple[Path, torch.nn.Module]]
MakeRunner = Callable[..., TorchModelRunner]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    """``tiny_checkpoint(family)`` -> (folder, transformers model), cached per session."""
    cache: dict[str, tuple[Path, torch.nn.Module]] = {}

    def make(family: Family) -> tuple[Path, torch.nn.Module]:
        if family not in cache:
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            cache[family] = (folder, save_tiny_checkpoint(folder, family))
        return cache[family]

    return make


@pytest.fixture
def make_runner() -> MakeRunner:
    """``make_runner(folder, static=False, native=True, fused=True, num_kv_blocks=64,
    **settings)`` on the CPU, float32 unless ``dtype`` says otherwise; ``native=False`` runs
    torch ops only, ``fused=False`` the native kernels one op at a time."""

    def make(
        folder: Path,
        *,
        static: bool = False,
        native: bool = True,
        fused: bool = True,
        num_kv_blocks: int | None = 64,
        **settings: object,
    ) -> TorchModelRunner:
        values: dict[str, object] = {
            "model_id": str(folder),
            "dtype": "float32",
            "device": "cpu",
            "block_size": 4,
            "max_total_tokens": 128,
            **settings,
        }
        return TorchModelRunner(
            RunnerSettings(**values),  # type: ignore[arg-type]
            device=CpuDevice(static_shapes=static, use_native=native, use_fused=fused),
            num_kv_blocks=num_kv_blocks,
        )

    return make
