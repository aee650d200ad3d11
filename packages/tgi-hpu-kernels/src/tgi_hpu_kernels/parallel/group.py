"""The torch.distributed group of the shards, and the step plans rank 0 sends through it.

``TensorParallelGroup.join`` initialises the default process group over TCP at
``master_addr:master_port`` with the device's collective backend (gloo on the CPU, nccl on
CUDA, hccl on Gaudi: ``Device.prepare_collectives()`` names it, and registers hccl). Rank 0
sends each ``StepPlan`` as msgpack bytes (its length, then a uint8 tensor); a length of 0
tells the other ranks to stop. Whoever starts the shard processes joins the group and hands
it to the runner (``shards.py`` has the mechanics; the server's engine, the supervision).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import msgspec
import torch
import torch.distributed as dist
from torch import Tensor

from tgi_core.contract import StepPlan
from tgi_core.settings.slices import RunnerSettings

__all__ = ["TensorParallelGroup", "check_group"]

logger = logging.getLogger(__name__)

# Shards wait in a broadcast while the engine is idle: the timeout must outlast any idle time.
_TIMEOUT = timedelta(days=30)
_PLAN_ENCODER = msgspec.msgpack.Encoder()
_PLAN_DECODER = msgspec.msgpack.Decoder(StepPlan)


class TensorParallelGroup:
    """This process's place among ``num_shard`` ranks (one per device)."""

    def __init__(
        self, rank: int, num_shard: int, device: torch.device, backend: str = "gloo"
    ) -> None:
        self.rank = rank
        self.num_shard = num_shard
        self._device = device  # where collective tensors live (the CPU for gloo)
        # hccl has no gather (Habana's HCCL: all-gather, reduce, broadcast and the like)
        self._gathers = backend != "hccl"

    @classmethod
    def join(
        cls, settings: RunnerSettings, backend: str, device: torch.device
    ) -> TensorParallelGroup:
        """Joins (rank 0: creates) the group; blocks until every rank has joined.

        ``backend`` is ``Device.prepare_collectives()``'s (which registers it with torch)."""
        dist.init_process_group(
            backend,
            init_method=f"tcp://{settings.master_addr}:{settings.master_port}",
            rank=settings.rank,
            world_size=settings.num_shard,
            timeout=_TIMEOUT,
        )
        logger.info("rank %d of %d joined (%s)", settings.rank, settings.num_shard, backend)
        comm_device = torch.device("cpu") if backend == "gloo" else device
        return cls(settings.rank, settings.num_shard, comm_device, backend)

    def all_reduce(self, tensor: Tensor) -> None:
        """Sums ``tensor`` over the ranks, in place."""
        dist.all_reduce(tensor)

    def gather_to_first(self, tensor: Tensor) -> Tensor | None:
        """Rank 0: every rank's ``tensor`` (all of one shape) stacked, ``[num_shard, *shape]``;
        the other ranks: None. Every rank calls it, in the same order as every collective.

        A backend without gather (hccl) all-gathers instead; ranks > 0 drop the result."""
        tensor = tensor.contiguous()
        if self.rank and self._gathers:
            dist.gather(tensor, dst=0)
            return None
        stacked = tensor.new_empty((self.num_shard, *tensor.shape))
        if self._gathers:
            dist.gather(tensor, list(stacked.unbind(0)), dst=0)  # written in place
        else:
            dist.all_gather_into_tensor(stacked, tensor)
        return stacked if self.rank == 0 else None

    def min_over_ranks(self, value: int) -> int:
        """The smallest ``value`` any rank holds (e.g. the KV blocks every rank can fit)."""
        tensor = torch.tensor([value], dtype=torch.int64, device=self._device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    def send_plan(self, plan: StepPlan) -> None:
        """Rank 0: the plan every rank runs next."""
        self._send_bytes(_PLAN_ENCODER.encode(plan))

    def send_stop(self) -> None:
        """Rank 0: tells the other ranks to leave their loop."""
        self._send_bytes(b"")

    def receive_plan(self) -> StepPlan | None:
        """Ranks > 0: the next plan, or None when rank 0 said stop."""
        length = torch.zeros(1, dtype=torch.int64, device=self._device)
        dist.broadcast(length, src=0)
        if not int(length.item()):
            return None
        data = torch.empty(int(length.item()), dtype=torch.uint8, device=self._device)
        dist.broadcast(data, src=0)
        return _PLAN_DECODER.decode(data.cpu().numpy().tobytes())

    def leave(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def _send_bytes(self, data: bytes) -> None:
        length = torch.tensor([len(data)], dtype=torch.int64, device=self._device)
        dist.broadcast(length, src=0)
        if data:
            payload = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self._device)
            dist.broadcast(payload, src=0)


def check_group(settings: RunnerSettings, group: TensorParallelGroup | None) -> None:
    """Raises ValueError (one line) unless ``group`` is the place ``settings`` give this rank
    (None for one shard)."""
    place = (group.rank, group.num_shard) if group is not None else (0, 1)
    if place != (settings.rank, settings.num_shard):
        raise ValueError(
            f"rank {settings.rank} of --num-shard {settings.num_shard} needs its "
            f"TensorParallelGroup (group=), joined by whoever starts the other ranks; "
            f"got rank {place[0]} of {place[1]}"
        )
