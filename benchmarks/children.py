"""compare.py's servers as child processes: a free port, start, wait for /health, stop.

Each child leads its own session, so stopping it (by its PID, then its session) ends every
process it started and nothing else on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

__all__ = ["child_server", "executable", "free_port"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def executable(name: str) -> str | None:
    """``name`` on PATH, or beside this interpreter (a virtualenv's scripts)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


@contextlib.contextmanager
def child_server(
    command: list[str], port: int, log: Path, ready_s: float, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """Runs ``command`` until the block ends; yields its base URL, once /health answers 200,
    and its PID (which is also its session id: every process it starts shares it)."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, process, log, ready_s)
            yield url, process.pid
        finally:
            _stop(process)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, ready_s: float) -> None:
    deadline = time.monotonic() + ready_s
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"exited with {process.returncode} before ready:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/health").status_code == httpx.codes.OK:
                    return
            time.sleep(0.5)
    raise RuntimeError(f"not ready after {ready_s:.0f} s (log: {log})")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to our child's PID; then SIGKILL to the session it leads (only its own
    descendants: a launcher's shards) if it lingers or left any behind."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
