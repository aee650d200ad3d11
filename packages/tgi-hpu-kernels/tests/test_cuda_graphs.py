"""``--cuda-graphs``: which decode batches the CUDA backend captures as graphs. The eager
branches run anywhere (they never touch CUDA); capture and replay need a CUDA device."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tgi_core.settings import HostInfo, Settings
from tgi_hpu_kernels.device.cuda import CudaGraphStepRunner

HOST = HostInfo(habana_available=False, embedded_model=None)


class Doubler(nn.Module):
    """A step module that counts its eager calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, input_ids: Tensor) -> Tensor:
        self.calls += 1
        return input_ids * 2


def _decode(runner: CudaGraphStepRunner, rows: int, device: str = "cpu") -> Tensor:
    return runner((torch.arange(rows, device=device),), is_prefill=False)


@pytest.mark.parametrize(
    ("enabled", "sizes", "rows"),
    [
        (True, (0,), 1),  # --cuda-graphs 0
        (True, (1, 2, 4), 3),  # a batch size not listed
        (False, (1, 2, 4), 2),  # ENABLE_HPU_GRAPH=false
    ],
)
def test_batches_without_a_graph_run_eagerly(
    enabled: bool, sizes: tuple[int, ...], rows: int
) -> None:
    module = Doubler()
    runner = CudaGraphStepRunner(module, enabled=enabled, batch_sizes=sizes)
    for _ in range(2):
        assert torch.equal(_decode(runner, rows), torch.arange(rows) * 2)
    assert (module.calls, runner.num_graphs) == (2, 0)


def test_prefill_always_runs_eagerly() -> None:
    module = Doubler()
    runner = CudaGraphStepRunner(module, enabled=True, batch_sizes=(1, 2))
    runner((torch.arange(2),), is_prefill=True)
    assert (module.calls, runner.num_graphs) == (1, 0)


def test_the_flag_reaches_the_runner_settings() -> None:
    assert Settings.from_sources([], {}, host=HOST).runner(0).cuda_graphs == (1, 2, 4, 8, 16, 32)
    settings = Settings.from_sources(["--cuda-graphs", "0"], {}, host=HOST)
    assert settings.runner(0).cuda_graphs == (0,)
    settings = Settings.from_sources(["--cuda-graphs", "1,8"], {}, host=HOST)
    assert settings.runner(0).cuda_graphs == (1, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_listed_batches_are_captured_once_and_replayed() -> None:
    module = Doubler().cuda()
    runner = CudaGraphStepRunner(module, enabled=True, batch_sizes=(2,))
    for _ in range(3):
        assert torch.equal(_decode(runner, 2, "cuda"), torch.arange(2, device="cuda") * 2)
    assert runner.num_graphs == 1
    assert module.calls == 2  # the warm-up run and the capture; replays call nothing
