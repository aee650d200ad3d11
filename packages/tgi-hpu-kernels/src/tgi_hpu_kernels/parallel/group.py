"""The torch.distributed group of the shards, and the step plans rank 0 sends through it.

``TensorParallelGroup.join`` first meets every rank at rank 0's TCP store
(``rendezvous.py``: bounded by ``--rendezvous-timeout``, one line naming who is missing),
then initialises the default process group on that store with the device's collective
backend (gloo on the CPU, nccl on CUDA, hccl on Gaudi: ``Device.prepare_collectives()``
names it, and registers hccl). The model's collectives time out after
``ENGINE_STEP_TIMEOUT`` (``collective_timeout``): a peer that far behind is hung. Plans go
through a second group of the same ranks with no practical timeout, because shards wait
there while the engine is idle. Rank 0 sends each ``StepPlan`` as msgpack bytes (its
length, then a uint8 tensor); a length of 0 tells the other ranks to stop. Within a step
rank 0 also broadcasts what it alone computes (a VLM prefill's prompt embeddings:
``broadcast``); the plan tells the other ranks to expect it.

Out of step: once a plan is sent, every rank runs the same collectives. A rank 0 that fails
after sending (``abandon``) cannot bring the shards back in step: it destroys its process
group, so that the shards waiting on it fail at once instead of at the timeout, and refuses
further plans. Whoever started the group decides what then (the server's engine exits).
``watch`` adds heartbeats (``liveness.py``) for peers that have no PID to watch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import timedelta

import msgspec
import torch
import torch.distributed as dist
from torch import Tensor

# torch.distributed re-exports these without listing them: mypy wants the defining module
from torch._C._distributed_c10d import PrefixStore, Store

from tgi_core.contract import StepPlan
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.parallel.liveness import OnLost, PeerWatch
from tgi_hpu_kernels.parallel.rendezvous import left_key, rendezvous

__all__ = ["TensorParallelGroup", "check_group"]

logger = logging.getLogger(__name__)

# Shards wait for the next plan while the engine is idle: that wait must outlast any idle time.
_PLAN_TIMEOUT = timedelta(days=30)
_PLAN_ENCODER = msgspec.msgpack.Encoder()
_PLAN_DECODER = msgspec.msgpack.Decoder(StepPlan)
_POLL_S = 0.1


class TensorParallelGroup:
    """This process's place among ``num_shard`` ranks (one per device)."""

    def __init__(
        self,
        rank: int,
        num_shard: int,
        device: torch.device,
        *,
        settings: RunnerSettings | None = None,
        store: Store | None = None,
        plan_group: dist.ProcessGroup | None = None,
        backend: str = "gloo",
    ) -> None:
        self.rank = rank
        self.num_shard = num_shard
        self._device = device  # where collective tensors live (the CPU for gloo)
        self._settings = settings
        self._store = store
        self._plan_group = plan_group
        self._watch = None if settings is None else PeerWatch(settings)  # beats from now
        self.out_of_step: str | None = None  # why, once a step failed after its plan went out
        # hccl has no gather (Habana's HCCL: all-gather, reduce, broadcast and the like)
        self._gathers = backend != "hccl"

    @classmethod
    def join(
        cls, settings: RunnerSettings, backend: str, device: torch.device
    ) -> TensorParallelGroup:
        """Joins (rank 0: creates) the group; blocks until every rank has joined.

        ``backend`` is ``Device.prepare_collectives()``'s (which registers it with torch).

        Raises:
            GroupJoinError: the group did not form within ``settings.rendezvous_timeout``.
        """
        store = rendezvous(settings)
        dist.init_process_group(
            backend,
            store=PrefixStore("tgi/pg", store),
            rank=settings.rank,
            world_size=settings.num_shard,
            timeout=timedelta(seconds=settings.collective_timeout),
        )
        plan_group = dist.new_group(backend=backend, timeout=_PLAN_TIMEOUT)
        logger.info("rank %d of %d joined (%s)", settings.rank, settings.num_shard, backend)
        comm_device = torch.device("cpu") if backend == "gloo" else device
        return cls(
            settings.rank,
            settings.num_shard,
            comm_device,
            settings=settings,
            store=store,
            plan_group=plan_group,
            backend=backend,
        )

    @property
    def settings(self) -> RunnerSettings | None:
        """The settings it joined with (None: a group not made by ``join``)."""
        return self._settings

    def watch(self, peers: Sequence[int], on_lost: OnLost) -> None:
        """Reports ``peers`` that stop beating (or rank 0's store gone) to ``on_lost`` once,
        from the heartbeat's thread. Stopped by ``send_stop`` or ``leave``."""
        if self._watch is None:
            raise RuntimeError("watch needs a group made by TensorParallelGroup.join")
        self._watch.watch(peers, on_lost)

    def all_reduce(self, tensor: Tensor) -> None:
        """Sums ``tensor`` over the ranks, in place."""
        dist.all_reduce(tensor)

    def broadcast(self, tensor: Tensor) -> None:
        """Rank 0's ``tensor`` on every rank, in place: the other ranks pass one of the same
        shape and dtype, which it overwrites."""
        if tensor.device == self._device:
            dist.broadcast(tensor, src=0)
            return
        staged = tensor.to(self._device)  # gloo sends host tensors only
        dist.broadcast(staged, src=0)
        tensor.copy_(staged)

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
        """Rank 0: the plan every rank runs next.

        Raises:
            RuntimeError: the shards are out of step (``abandon``): nothing can run."""
        if self.out_of_step is not None:
            raise RuntimeError(
                f"the shards are out of step since {self.out_of_step}; the service must restart"
            )
        self._send_bytes(_PLAN_ENCODER.encode(plan))

    def abandon(self, why: str) -> None:
        """Rank 0, after a failure once a plan went out: the shards wait in collectives this
        rank will not join. Destroying the process group fails them now; no plan follows."""
        self.out_of_step = why
        logger.error("the shards are out of step since %s", why)
        self._stop_watch()
        if dist.is_initialized():
            dist.destroy_process_group()

    def send_stop(self) -> None:
        """Rank 0: tells the other ranks to leave their loop (the watch stops first: they
        stop beating). Out of step, there is no group left to say it through."""
        self._stop_watch()
        if self.out_of_step is None:
            self._send_bytes(b"")

    def receive_plan(self) -> StepPlan | None:
        """Ranks > 0: the next plan, or None when rank 0 said stop."""
        length = torch.zeros(1, dtype=torch.int64, device=self._device)
        dist.broadcast(length, src=0, group=self._plan_group)
        if not int(length.item()):
            self._stop_watch()  # rank 0 may be gone before this rank has left
            return None
        data = torch.empty(int(length.item()), dtype=torch.uint8, device=self._device)
        dist.broadcast(data, src=0, group=self._plan_group)
        return _PLAN_DECODER.decode(data.cpu().numpy().tobytes())

    def wait_left(self, ranks: Sequence[int], timeout_s: float) -> list[int]:
        """Rank 0, after ``send_stop``: waits up to ``timeout_s`` for ``ranks`` (those with
        no PID here: other nodes') to leave; returns those that did not."""
        if self._store is None:
            return list(ranks)
        deadline = time.monotonic() + timeout_s
        pending = list(ranks)
        while pending and time.monotonic() < deadline:
            pending = [rank for rank in pending if not self._store.check([left_key(rank)])]
            if pending:
                time.sleep(_POLL_S)
        return pending

    def leave(self) -> None:
        """Stops the watch, marks this rank as left (rank 0 waits for that), leaves."""
        self._stop_watch()
        if self._store is not None and self.rank > 0:
            # rank 0 (the store) already gone: nobody waits for the mark
            with contextlib.suppress(RuntimeError, OSError):
                self._store.set(left_key(self.rank), "1")
        if dist.is_initialized():
            dist.destroy_process_group()
        self._store = None  # rank 0: the store's server closes with its last reference

    def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None

    def _send_bytes(self, data: bytes) -> None:
        length = torch.tensor([len(data)], dtype=torch.int64, device=self._device)
        dist.broadcast(length, src=0, group=self._plan_group)
        if data:
            payload = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self._device)
            dist.broadcast(payload, src=0, group=self._plan_group)


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
