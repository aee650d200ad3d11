"""The engine's shard supervision (``tgi_server.engine.shard_supervision``), on the CPU (gloo).

Rank 0 runs in a child process (a dead shard ends it with ``os._exit``): it starts its
shards (``python -m tgi_server.engine.shard``), joins their group, builds its runner with
it, prints the shard's PID, then either waits to be killed by the supervision or closes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tgi_server.testing import free_port

testing = pytest.importorskip("tgi_hpu_kernels.testing")

pytestmark = pytest.mark.slow  # model loads in two processes (about 10 s)

_RANK0_SCRIPT = """
import sys, time
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_server.engine.shard_supervision import EngineShards

settings = RunnerSettings(
    model_id=sys.argv[1], dtype="float32", device="cpu", block_size=4, max_total_tokens=64,
    num_kv_blocks=16, num_shard=2, master_addr="127.0.0.1", master_port=int(sys.argv[2]),
)
device = CpuDevice()
shards = EngineShards.start(settings, device)
runner = TorchModelRunner(settings, device=device, group=shards.group)
print(shards.pids[0], flush=True)
if sys.argv[3] == "close":
    runner.close()
    shards.close()
    print("closed", flush=True)
else:
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    testing.save_tiny_checkpoint(folder, "llama")
    return folder


def _rank0(folder: Path, then: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _RANK0_SCRIPT, str(folder), str(free_port()), then],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_dead_shard_takes_the_engine_down_with_exit_code_1(tiny_llama: Path) -> None:
    with _rank0(tiny_llama, "wait") as rank0:
        try:
            assert rank0.stdout is not None
            shard_pid = int(rank0.stdout.readline())
            os.kill(shard_pid, signal.SIGKILL)
            _, stderr = rank0.communicate(timeout=30)
        finally:
            if rank0.poll() is None:
                rank0.kill()
    assert rank0.returncode == 1
    assert "shard 1 exited with code -9: stopping the engine" in stderr


def test_closing_stops_the_shards_and_the_engine_exits_0(tiny_llama: Path) -> None:
    with _rank0(tiny_llama, "close") as rank0:
        try:
            stdout, stderr = rank0.communicate(timeout=60)
        finally:
            if rank0.poll() is None:
                rank0.kill()
    shard_pid, closed = stdout.split()
    assert (rank0.returncode, closed) == (0, "closed"), stderr
    assert not psutil.pid_exists(int(shard_pid))
