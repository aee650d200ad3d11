"""The engine's shard processes: ranks 1..N-1 of its runner, started, watched, stopped by PID.

``EngineShards.start(settings, device)`` (rank 0's settings and device) starts ``python -m
tgi_server.engine.shard`` for each other rank (the kernels' ``ShardProcesses``, which first
checks the model splits ``num_shard`` ways), watches them from a thread, then joins their
group: ``TorchModelRunner(..., group=shards.group)`` is handed it. A shard that dies while the
engine runs takes the engine down with exit code 1 (the other shards killed first), as TGI's
launcher does when a shard fails: the launcher sees the engine exit and stops the service.
``close``, after the runner's, tells the shards to stop, waits for them, kills any left by
PID and leaves the group; should the engine exit without it, the shards are killed.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading

from tgi_core.nested_model import NestedTextModel
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device import Device
from tgi_hpu_kernels.parallel import ShardProcesses, TensorParallelGroup, stop_shards

__all__ = ["EngineShards", "exit_on_shard_death"]

logger = logging.getLogger(__name__)

_POLL_S = 0.5


def exit_on_shard_death(rank: int, returncode: int) -> None:
    """The engine's reaction to a dead shard: exit with code 1 (no half service)."""
    logger.error("shard %d exited with code %d: stopping the engine", rank, returncode)
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

    def _watch(self) -> None:
        while not self._closing.wait(_POLL_S):
            exited = self._processes.exited()
            if exited is not None and not self._closing.is_set():
                self._closing.set()
                self._processes.kill()
                exit_on_shard_death(*exited)
                return
