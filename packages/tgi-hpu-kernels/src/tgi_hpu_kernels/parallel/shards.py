"""Ranks 1..N-1 as child processes: started, polled and stopped by PID, nothing more.

``ShardProcesses.start(settings, command)`` first checks the model splits ``num_shard`` ways
(a bad count fails with one line, before any process starts), then runs ``command`` once per
rank 1..N-1, each in its own session (a terminal's Ctrl-C reaches only rank 0, which stops
them), with that rank's ``RunnerSettings`` as JSON on stdin. ``python -m
tgi_hpu_kernels.parallel.worker`` is such a command (a bare rank); the server's engine runs its
own, and supervises the processes: what a dead shard means is the caller's policy, so nothing
here watches them or ends the process. ``stop_shards`` is the orderly end: the stop message
through the group, a bounded wait, a kill by PID for any left, leaving the group.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from dataclasses import replace

import msgspec

from tgi_core.nested_model import NestedTextModel
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.parallel.group import TensorParallelGroup
from tgi_hpu_kernels.parallel.sharding import check_shardable

__all__ = ["ShardProcesses", "stop_shards"]

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0


class ShardProcesses:
    """Ranks 1..N-1 as children of this process (rank 0), by PID."""

    def __init__(self, processes: dict[int, subprocess.Popen[bytes]]) -> None:
        self._processes = processes

    @classmethod
    def start(
        cls,
        settings: RunnerSettings,
        command: Sequence[str],
        *,
        nested_model: NestedTextModel | None = None,
    ) -> ShardProcesses:
        """Checks the model splits ``settings.num_shard`` ways, then starts ``command`` for
        each rank > 0 (its settings on stdin). On any failure those started are killed.
        ``nested_model``: where the text model, the part that is sharded, sits in a
        multimodal checkpoint."""
        from tgi_hpu_kernels.loader import read_model_config  # the loader imports this package
        from tgi_hpu_kernels.medusa import with_medusa

        base, _ = with_medusa(settings)  # a Medusa model splits as its base model does
        check_shardable(read_model_config(base, nested_model)[1], settings.num_shard)
        shards = cls({})
        try:
            for rank in range(1, settings.num_shard):
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
    """Rank 0, after its last step: tells the shards to stop, waits for them (kills them after
    ``timeout_s``), then leaves the group."""
    try:
        group.send_stop()
    except RuntimeError as error:  # a shard already gone: they are killed below
        logger.warning("could not tell the shards to stop: %s", error)
    processes.stop(timeout_s)
    group.leave()
