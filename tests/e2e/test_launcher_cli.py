"""``text-generation-launcher`` before any model loads: help, version, bad flags, refusals.

The real console script, as a user types it. A busy ``--prometheus-port`` stops it before
the engine starts, which also shows ``-e/--env`` and the JSON log lines without loading the
model.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tgi_core.settings import render_help
from tgi_server import __version__

pytestmark = pytest.mark.e2e

LAUNCHER = str(Path(sys.executable).with_name("text-generation-launcher"))


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LAUNCHER, *argv], capture_output=True, text=True, timeout=120, check=False
    )


def test_help_and_version() -> None:
    helped = run("--help")
    assert (helped.returncode, helped.stdout) == (0, render_help())
    assert "--graceful-termination-timeout" in helped.stdout
    versioned = run("--version")
    assert (versioned.returncode, versioned.stdout) == (
        0,
        f"text-generation-launcher {__version__}\n",
    )


def test_a_bad_flag_is_a_usage_error() -> None:
    bad = run("--port", "eighty")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: invalid value 'eighty' for '--port <PORT>'")
    unknown = run("--prot", "80")
    assert unknown.returncode == 2
    assert "tip: a similar argument exists: '--port'" in unknown.stderr


def test_busy_metrics_port_fails_clearly_with_env_and_json_logs() -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused = run("--prometheus-port", str(port), "-e", "--json-output")
    assert refused.returncode == 1
    records = [json.loads(line) for line in refused.stdout.splitlines()]
    for record in records:
        assert list(record) == ["timestamp", "level", "fields", "target"], record
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", record["timestamp"])
    messages = [record["fields"]["message"] for record in records]
    environment = next(message for message in messages if message.startswith("Runtime env"))
    assert "Python version: " in environment and "hpu-smi:\n" in environment
    errors = [record for record in records if record["level"] == "ERROR"]
    assert len(errors) == 1
    assert errors[0]["fields"]["message"].startswith(f"cannot listen on --prometheus-port {port}: ")
    assert messages[-1] == "Shutdown complete"
