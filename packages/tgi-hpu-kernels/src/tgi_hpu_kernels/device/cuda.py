"""The CUDA backend: flash/efficient SDPA, CUDA graphs for decode, NCCL for collectives.

Decode steps are captured as one CUDA graph per bucket shape (on first use, i.e. during
warmup) and replayed with the step's inputs copied into the captured buffers, for the batch
sizes of ``--cuda-graphs`` (TGI's default 1, 2, 4, 8, 16, 32; ``0`` captures none); a decode
batch of another size, and every prefill, runs eagerly (prefill shapes are many and their
kernels large). ENABLE_HPU_GRAPH=false switches the decode graphs off here too;
LIMIT_HPU_GRAPH, USE_FLASH_ATTENTION and FLASH_ATTENTION_RECOMPUTE are Gaudi switches with no
meaning on CUDA (torch picks the flash kernel when it can).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tgi_hpu_kernels.device.base import Device, MemoryInfo, StepRunner

__all__ = ["CudaDevice"]


def _clone_tree(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, tuple):
        items = [_clone_tree(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


def _copy_tree(dst: Any, src: Any) -> None:
    if isinstance(dst, Tensor):
        dst.copy_(src, non_blocking=True)
    elif isinstance(dst, tuple):
        for d, s in zip(dst, src, strict=True):
            _copy_tree(d, s)


def _shape_key(value: Any) -> Any:
    if isinstance(value, Tensor):
        return (tuple(value.shape), value.dtype)
    if isinstance(value, tuple):
        return tuple(_shape_key(item) for item in value)
    return value


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    static_args: tuple[Any, ...]
    output: Tensor


class CudaGraphStepRunner:
    """Captures one CUDA graph per decode input shape whose batch (rows) is one of
    ``batch_sizes`` and replays it; other decode batches and prefill run eagerly."""

    def __init__(
        self,
        module: nn.Module,
        *,
        enabled: bool,
        batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    ) -> None:
        self._module = module
        # --cuda-graphs 0, or ENABLE_HPU_GRAPH=false: nothing is captured
        captures = enabled and 0 not in batch_sizes
        self._batch_sizes = frozenset(batch_sizes) if captures else frozenset()
        self._graphs: dict[Any, _Captured] = {}
        self._pool: Any = None

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def __call__(self, args: tuple[Any, ...], *, is_prefill: bool) -> Tensor:
        rows = args[0].shape[0]  # input_ids: one row per sequence in a decode step
        if is_prefill or rows not in self._batch_sizes:
            hidden: Tensor = self._module(*args)
            return hidden
        key = _shape_key(args)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(args)
        _copy_tree(captured.static_args, args)
        captured.graph.replay()
        return captured.output

    def _capture(self, args: tuple[Any, ...]) -> _Captured:
        static_args = _clone_tree(args)
        # One eager run on a side stream first, as torch's CUDA graph docs require.
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._module(*static_args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self._module(*static_args)
        self._pool = graph.pool()
        return _Captured(graph=graph, static_args=static_args, output=output)


class CudaDevice(Device):
    """One CUDA device (``cuda:<index>``)."""

    name = "cuda"
    collective_backend = "nccl"
    needs_static_shapes = True

    def __init__(
        self,
        *,
        index: int = 0,
        graphs: bool = True,
        graph_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    ) -> None:
        super().__init__(torch.device("cuda", index))
        self._graphs = graphs
        self._graph_batch_sizes = graph_batch_sizes
        torch.cuda.set_device(self.torch_device)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.torch_device)

    def memory_info(self) -> MemoryInfo:
        free, total = torch.cuda.mem_get_info(self.torch_device)
        return MemoryInfo(free_bytes=int(free), total_bytes=int(total))

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def step_runner(self, module: nn.Module) -> StepRunner:
        return CudaGraphStepRunner(
            module, enabled=self._graphs, batch_sizes=self._graph_batch_sizes
        )

    def profiler_activities(self) -> list[torch.profiler.ProfilerActivity]:
        return [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]

    def describe(self) -> str:
        return f"cuda ({torch.cuda.get_device_name(self.torch_device)})"
