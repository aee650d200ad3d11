"""tgi-core and tgi-scheduler install and run on their own: no torch, no falcon.

Builds a fresh virtual environment, installs the two packages from their folders (as a user
embedding the scheduler would), and drives the scheduler with its shipped FakeRunner there.
"""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMOKE = """
from tgi_core.contract import GenerationRequest, TokenEvent
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler import Engine
from tgi_scheduler.testing import FakeRunner

settings = SchedulerSettings(max_input_tokens=64, max_total_tokens=128, block_size=16)
engine = Engine.create(settings, FakeRunner(num_kv_blocks=64, block_size=16), eos_token_ids=[0])
engine.warmup()
for request_id in range(3):
    engine.add_request(GenerationRequest(request_id, (5, 6, 7), max_new_tokens=4))
finished = {}
while engine.has_unfinished():
    for event in engine.step():
        assert isinstance(event, TokenEvent), event
        if event.finish_reason is not None:
            finished[event.request_id] = event.finish_reason.value
assert finished == {0: "length", 1: "length", 2: "length"}, finished
stats = engine.stats()
assert stats.kv_blocks_used == 0 and stats.queue_size == 0, stats
print("smoke ok")
"""


@pytest.mark.slow
def test_core_and_scheduler_install_without_torch_or_falcon(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(ROOT / "packages/tgi-core"),
            str(ROOT / "packages/tgi-scheduler"),
        ],
        check=True,
        timeout=600,
    )
    installed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.lower()
    names = {line.split("==")[0] for line in installed.splitlines()}
    assert {"tgi-core", "tgi-scheduler"} <= names
    assert not names & {"torch", "falcon", "habana-frameworks", "transformers"}, names
    result = subprocess.run(
        [python, "-c", SMOKE], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke ok" in result.stdout
