"""A node's shard ranks as child processes: started, polled and stopped by PID, nothing more.

``ShardProcesses.start(settings, command)`` first checks the model splits ``num_shard`` ways
(a bad count fails with one line, before any process starts), then runs ``command`` once per
rank of this node but rank 0 (``node_ranks``: with ``--nnodes`` > 1 each node holds a block
of ranks; node 0's includes rank 0, the caller itself), each in its own session (a
terminal's Ctrl-C reaches only rank 0, which stops them), with that rank's ``RunnerSettings``
as JSON on stdin. ``python -m tgi_hpu_kernels.parallel.worker`` is such a command (a bare
rank); the server's engine runs its own, and supervises the processes: what a dead shard
means is the caller's policy, so nothing here watches them or ends the process.
``stop_shards`` is the orderly end: the stop message through the group, a bounded wait (for
other nodes' ranks: their ``left`` marks), a kill by PID for any left here, leaving the group.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import msgspec
import torch

from tgi_core.nested_model import NestedTextModel
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.parallel.group import TensorParallelGroup
from tgi_hpu_kernels.parallel.sharding import check_shardable

__all__ = ["ShardProcesses", "local_shards", "node_ranks", "remote_ranks", "stop_shards"]

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0


def node_ranks(settings: RunnerSettings, node_rank: int) -> range:
    """The ranks node ``node_rank`` runs: a block of ``ranks_per_node``."""
    size = settings.ranks_per_node
    return range(node_rank * size, (node_rank + 1) * size)


def remote_ranks(settings: RunnerSettings) -> list[int]:
    """The ranks on other nodes than ``settings.rank``'s: no PID to watch them by."""
    here = node_ranks(settings, settings.node_rank)
    return [rank for rank in range(settings.num_shard) if rank not in here]


class ShardProcesses:
    """A node's ranks (but rank 0) as children of this process, by PID."""

    def __init__(self, processes: dict[int, subprocess.Popen[bytes]]) -> None:
        self._processes = processes

    @classmethod
    def start(
        cls,
        settings: RunnerSettings,
        command: Sequence[str],
        *,
        node_rank: int = 0,
        nested_model: NestedTextModel | None = None,
    ) -> ShardProcesses:
        """Checks the model splits ``settings.num_shard`` ways, then starts ``command`` for
        each rank > 0 of node ``node_rank`` (its settings on stdin). On any failure those
        started are killed. ``nested_model``: where the text model, the part that is
        sharded, sits in a multimodal checkpoint."""
        from tgi_hpu_kernels.loader import read_model_config  # the loader imports this package
        from tgi_hpu_kernels.medusa import with_medusa

        base, _ = with_medusa(settings)  # a Medusa model splits as its base model does
        check_shardable(read_model_config(base, nested_model)[1], settings.num_shard)
        shards = cls({})
        try:
            for rank in node_ranks(settings, node_rank):
                if rank == 0:
                    continue  # the caller
                shards._processes[rank] = _start(replace(settings, rank=rank), command)
        except BaseException:
            shards.kill()
            raise
        return shards

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes.values()]

    def exited(self) -> tuple[int, int] | None:
        """The first shard found exited: ``(rank, returncode)``; None while all run."""
        for rank, process in self._processes.items():
            if (code := process.poll()) is not None:
                return rank, code
        return None

    def exit_codes(self) -> dict[int, int | None]:
        """Each shard's exit status by rank (None while it runs)."""
        return {rank: process.poll() for rank, process in self._processes.items()}

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Waits up to ``timeout_s`` for the shards to leave (after a stop), then kills them."""
        deadline = time.monotonic() + timeout_s
        for rank, process in self._processes.items():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("shard %d (pid %d) did not stop: killing it", rank, process.pid)
                process.kill()
                process.wait()

    def kill(self) -> None:
        """Stops every shard at once (rank 0 cannot tell them to stop)."""
        for process in self._processes.values():
            if process.poll() is None:
                process.kill()
        self.stop()


def _start(settings: RunnerSettings, command: Sequence[str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(list(command), stdin=subprocess.PIPE, start_new_session=True)
    assert process.stdin is not None
    process.stdin.write(msgspec.json.encode(settings))
    process.stdin.close()
    logger.info("started shard %d (pid %d)", settings.rank, process.pid)
    return process


def stop_shards(
    group: TensorParallelGroup, processes: ShardProcesses, timeout_s: float = STOP_TIMEOUT_S
) -> None:
    """Rank 0, after its last step: tells the shards to stop, waits for them (kills its own
    after ``timeout_s``; other nodes' ranks are theirs to stop), then leaves the group."""
    try:
        group.send_stop()
    except RuntimeError as error:  # a shard already gone: they are killed below
        logger.warning("could not tell the shards to stop: %s", error)
    deadline = time.monotonic() + timeout_s
    processes.stop(timeout_s)
    if group.num_shard > 1 and (settings := group.settings) is not None:
        pending = group.wait_left(remote_ranks(settings), max(0.0, deadline - time.monotonic()))
        if pending:
            logger.warning("rank(s) %s did not leave in time", ", ".join(map(str, pending)))
    group.leave()


@contextmanager
def local_shards(
    settings: RunnerSettings,
    command: Sequence[str],
    *,
    backend: str = "gloo",
    device: torch.device | None = None,
    nested_model: NestedTextModel | None = None,
) -> Iterator[tuple[TensorParallelGroup, ShardProcesses]]:
    """Rank 0's side of a group on this host (``device``: its own, the CPU by default):
    starts node 0's other ranks (``command``), joins the group and yields it with the
    processes. Leaving the block stops them in order (``stop_shards``); an exception kills
    them instead (they may wait in a collective rank 0 will not join)."""
    processes = ShardProcesses.start(settings, command, nested_model=nested_model)
    try:
        group = TensorParallelGroup.join(settings, backend, device or torch.device("cpu"))
    except BaseException:
        processes.kill()
        raise
    try:
        yield group, processes
    except BaseException:
        processes.kill()
        group.leave()
        raise
    stop_shards(group, processes)
