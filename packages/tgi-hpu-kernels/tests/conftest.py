"""Shared fixtures: tiny random checkpoints (built once per session) and runners over them."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import torch

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.layers import QuantizedKernels, QuantizedWeight, TorchLayerKernels
from tgi_hpu_kernels.layers.quantized import to_uint4_words
from tgi_hpu_kernels.layers.uint4_words import Uint4Words
from tgi_hpu_kernels.parallel import TensorParallelGroup, local_shards
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_hpu_kernels.testing import Family, save_tiny_checkpoint

TinyCheckpoint = Callable[[Family], tuple[Path, torch.nn.Module]]
MakeRunner = Callable[..., TorchModelRunner]
ShardedRunner = Callable[..., AbstractContextManager[tuple[TorchModelRunner, list[int]]]]
SHARD_COMMAND = (sys.executable, "-m", "tgi_hpu_kernels.parallel.worker")


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


def runner_settings(folder: Path, **settings: object) -> RunnerSettings:
    """The settings ``make_runner`` builds: float32 on the CPU unless ``settings`` say else."""
    values: dict[str, object] = {
        "model_id": str(folder),
        "dtype": "float32",
        "device": "cpu",
        "block_size": 4,
        "max_total_tokens": 128,
        **settings,
    }
    return RunnerSettings(**values)  # type: ignore[arg-type]


class GaudiLayoutCpu(CpuDevice):
    """The CPU device under Gaudi's weight-only contract (``device/hpu.py``): int4 only, with
    integer zero points, each layer repacked into uint4 words at load, and the words read
    back by ``dequantize_words`` where Gaudi calls ``torch.ops.hpu.convert_from_uint4``."""

    @property
    def quantized_kernels(self) -> QuantizedKernels:
        return QuantizedKernels("hpu", frozenset((4,)), integer_zero_points=True)

    def pack_quantized(self, weight: QuantizedWeight) -> Uint4Words:
        return to_uint4_words(weight, torch.bfloat16)

    def quantized_linear(
        self, x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None
    ) -> torch.Tensor:
        assert weight.uint4 is not None, "a layer was not repacked"
        return TorchLayerKernels.quantized_linear(self, x, weight, bias)


@pytest.fixture
def make_runner() -> MakeRunner:
    """``make_runner(folder, static=False, native=True, fused=True, num_kv_blocks=64,
    group=None, gaudi_layout=False, **settings)`` on the CPU, float32 unless ``dtype`` says
    otherwise; ``native=False`` runs torch ops only, ``fused=False`` the native kernels one op
    at a time; ``group``: rank 0's tensor-parallel group (``sharded_runner`` starts the other
    ranks); ``gaudi_layout``: quantized weights as Gaudi holds them (``GaudiLayoutCpu``)."""

    def make(
        folder: Path,
        *,
        static: bool = False,
        native: bool = True,
        fused: bool = True,
        num_kv_blocks: int | None = 64,
        group: TensorParallelGroup | None = None,
        gaudi_layout: bool = False,
        **settings: object,
    ) -> TorchModelRunner:
        cls = GaudiLayoutCpu if gaudi_layout else CpuDevice
        return TorchModelRunner(
            runner_settings(folder, **settings),
            device=cls(static_shapes=static, use_native=native, use_fused=fused),
            num_kv_blocks=num_kv_blocks,
            group=group,
        )

    return make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sharded_runner(make_runner: MakeRunner) -> ShardedRunner:
    """``with sharded_runner(folder, num_shard=2, **settings) as (runner, shard_pids)``:
    rank 0's runner here (``make_runner``'s), ranks 1..num_shard-1 as bare ``python -m
    tgi_hpu_kernels.parallel.worker`` children on 127.0.0.1 (the server's engine runs its
    own, supervised). On the way out the runner closes and the shards stop, by PID."""

    @contextmanager
    def run(
        folder: Path, *, num_shard: int = 2, **settings: object
    ) -> Iterator[tuple[TorchModelRunner, list[int]]]:
        values = {"num_shard": num_shard, "master_addr": "127.0.0.1", **settings}
        values["master_port"] = free_port()
        with local_shards(runner_settings(folder, **values), SHARD_COMMAND) as (group, shards):
            runner = make_runner(folder, group=group, **values)
            try:
                yield runner, shards.pids
            finally:
                runner.close()

    return run
