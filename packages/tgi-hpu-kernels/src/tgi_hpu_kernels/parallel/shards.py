"""The shard processes of a tensor-parallel runner, and joining their group.

Rank 0 (the engine process) starts ranks 1..N-1 as ``python -m tgi_hpu_kernels.parallel.worker``
children, each in its own session (a terminal's Ctrl-C reaches only the engine, which stops
them), with their ``RunnerSettings`` as JSON on stdin. A watcher thread takes the whole
process down with exit code 1 when a shard dies while the engine runs, as TGI's launcher
does when a shard fails; ``close`` stops them all by PID. What each rank holds is
``sharding.py``'s business, the collectives ``group.py``'s.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import msgspec
import torch

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device.base import Device
from tgi_hpu_kernels.parallel.group import TensorParallelGroup
from tgi_hpu_kernels.parallel.sharding import check_shardable

__all__ = ["ShardProcesses", "TensorParallel", "exit_on_shard_death", "start_tensor_parallel"]

logger = logging.getLogger(__name__)

_POLL_S = 0.5
_STOP_TIMEOUT_S = 10.0

ShardExit = Callable[[int, int], None]


def exit_on_shard_death(rank: int, returncode: int) -> None:
    """The default reaction to a dead shard: the engine exits with code 1 (no half service)."""
    logger.error("shard %d exited with code %d: stopping the engine", rank, returncode)
    logging.shutdown()
    os._exit(1)


class ShardProcesses:
    """Ranks 1..N-1 as child processes of rank 0, watched and stopped by PID."""

    def __init__(self, settings: RunnerSettings, *, on_exit: ShardExit = exit_on_shard_death):
        self._closing = threading.Event()
        self._on_exit = on_exit
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        try:
            for rank in range(1, settings.num_shard):
                self._processes[rank] = _start_shard(replace(settings, rank=rank))
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        self._watcher = threading.Thread(target=self._watch, name="shard-watcher", daemon=True)
        self._watcher.start()

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes.values()]

    def stop(self, timeout_s: float = _STOP_TIMEOUT_S) -> None:
        """Waits up to ``timeout_s`` for the shards to leave (after a stop), then kills them."""
        self._closing.set()
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
        self._closing.set()
        for process in self._processes.values():
            if process.poll() is None:
                process.kill()
        self.stop()

    def _watch(self) -> None:
        while not self._closing.wait(_POLL_S):
            for rank, process in self._processes.items():
                code = process.poll()
                if code is not None and not self._closing.is_set():
                    self._closing.set()
                    for other in self._processes.values():
                        if other.poll() is None:
                            other.kill()
                    self._on_exit(rank, code)
                    return


def _start_shard(settings: RunnerSettings) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tgi_hpu_kernels.parallel.worker", str(os.getpid())]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, start_new_session=True)
    assert process.stdin is not None
    process.stdin.write(msgspec.json.encode(settings))
    process.stdin.close()
    logger.info("started shard %d (pid %d)", settings.rank, process.pid)
    return process


class TensorParallel:
    """A runner's view of tensor parallelism: its group, and on rank 0 the shard processes."""

    def __init__(self, group: TensorParallelGroup, processes: ShardProcesses | None) -> None:
        self.group = group
        self.processes = processes

    @property
    def rank(self) -> int:
        return self.group.rank

    @property
    def num_shard(self) -> int:
        return self.group.num_shard

    @classmethod
    def start(
        cls,
        settings: RunnerSettings,
        *,
        backend: str,
        device: torch.device,
        on_exit: ShardExit = exit_on_shard_death,
    ) -> TensorParallel:
        """Rank 0: starts the shards, then joins the group; ranks > 0: join it."""
        processes = ShardProcesses(settings, on_exit=on_exit) if settings.rank == 0 else None
        try:
            group = TensorParallelGroup.join(settings, backend, device)
        except BaseException:
            if processes is not None:
                processes.kill()
            raise
        return cls(group, processes)

    def close(self) -> None:
        """Rank 0: tells the shards to stop, waits for them (kills them after a timeout)."""
        if self.processes is None:
            return
        try:
            self.group.send_stop()
        except RuntimeError as error:  # a shard already gone: they are killed below
            logger.warning("could not tell the shards to stop: %s", error)
        self.processes.stop()
        self.group.leave()


def start_tensor_parallel(settings: RunnerSettings, *, device: Device) -> TensorParallel | None:
    """None for one shard; else checks the model splits ``num_shard`` ways (before any
    process starts: a bad count fails with one line) and starts or joins the group."""
    if settings.num_shard == 1:
        return None
    from tgi_hpu_kernels.loader import read_model_config  # the loader imports this package

    check_shardable(read_model_config(settings)[1], settings.num_shard)
    return TensorParallel.start(
        settings, backend=device.prepare_collectives(), device=device.torch_device
    )
