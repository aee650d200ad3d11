"""The engine's shard processes: its node's other ranks, started, watched, stopped by PID.

``EngineShards.start(settings, device)`` (rank 0's settings and device) starts ``python -m
tgi_server.engine.shard`` for each other rank of node 0 (the kernels' ``ShardProcesses``,
which first checks the model splits ``num_shard`` ways), watches them from a thread, then
joins the group (with ``--nnodes`` > 1 the other nodes' launchers start theirs):
``TorchModelRunner(..., group=shards.group)`` is handed it. The engine exits with code 1
(its own shards killed first), as TGI's launcher does when a shard fails, when:

- one of its shard processes dies;
- a rank on another node stops beating (the group's heartbeats: a node lost or hung);
- a step failed after its plan reached the shards (they are out of step for good).

The launcher sees the engine exit and stops the service; the other nodes' shards see rank 0
gone and exit too. ``close``, after the runner's, tells the shards to stop, waits for them
(other nodes' by their ``left`` marks), kills any of its own left by PID and leaves the
group; should the engine exit without it, its shards are killed.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Sequence

from tgi_core.nested_model import NestedTextModel
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device import Device
from tgi_hpu_kernels.parallel import (
    ShardProcesses,
    TensorParallelGroup,
    remote_ranks,
    stop_shards,
)

__all__ = ["EngineShards", "exit_on_shard_death"]

logger = logging.getLogger(__name__)

_POLL_S = 0.5


def exit_on_shard_death(rank: int, returncode: int) -> None:
    """The engine's reaction to a dead shard: exit with code 1 (no half service)."""
    _exit_1(f"shard {rank} exited with code {returncode}")


def _exit_1(why: str) -> None:
    logger.error("%s: stopping the engine", why)
    logging.shutdown()
    os._exit(1)


class EngineShards:
    """Ranks 1..N-1 as children of the engine process, and the group they joined."""

    def __init__(self, processes: ShardProcesses) -> None:
        self._processes = processes
        self._group: TensorParallelGroup | None = None
        self._closing = threading.Event()
        atexit.register(self.kill)
        self._watcher = threading.Thread(target=self._watch, name="shard-watcher", daemon=True)
        self._watcher.start()

    @classmethod
    def start(
        cls, settings: RunnerSettings, device: Device, nested_model: NestedTextModel | None = None
    ) -> EngineShards:
        """Starts and watches the shards, then joins their group (blocks until all have).
        ``nested_model``: a VLM's text model (``tgi_vlm.runner_parts``), the part sharded."""
        command = [sys.executable, "-m", "tgi_server.engine.shard", str(os.getpid())]
        shards = cls(ShardProcesses.start(settings, command, nested_model=nested_model))
        try:
            backend = device.prepare_collectives()
            shards._group = TensorParallelGroup.join(settings, backend, device.torch_device)
            if remote := remote_ranks(settings):
                shards._group.watch(remote, shards._on_remote_lost)
        except BaseException:
            shards.kill()
            raise
        return shards

    @property
    def group(self) -> TensorParallelGroup:
        if self._group is None:
            raise RuntimeError("the shards' group is joined by EngineShards.start")
        return self._group

    @property
    def pids(self) -> list[int]:
        return self._processes.pids

    def close(self) -> None:
        """After rank 0's last step: stop the shards (a stop message, then by PID)."""
        self._closing.set()
        atexit.unregister(self.kill)
        stop_shards(self.group, self._processes)

    def kill(self) -> None:
        """Stops every shard at once (start-up failed, or the engine exits unclosed)."""
        self._closing.set()
        atexit.unregister(self.kill)
        self._processes.kill()

    def _on_remote_lost(self, ranks: Sequence[int], why: str) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        self._processes.kill()
        _exit_1(f"rank(s) {', '.join(map(str, ranks))} on another node lost ({why})")

    def _watch(self) -> None:
        while not self._closing.wait(_POLL_S):
            exited = self._processes.exited()
            out_of_step = None if self._group is None else self._group.out_of_step
            if (exited is None and out_of_step is None) or self._closing.is_set():
                continue
            self._closing.set()
            self._processes.kill()
            if exited is not None:
                exit_on_shard_death(*exited)
            else:  # the failed step's requests were answered meanwhile (the engine loop)
                _exit_1(f"the shards are out of step since {out_of_step}")
            return
