"""Fixtures of the end-to-end tests: real launchers on 127.0.0.1, and the clients' venv.

``service`` is the main instance, shared by the session: the real ``text-generation-launcher``
on the embedded SmolLM2 model, its engine process warmed up, Gunicorn with two uvicorn
workers. Limits are small so that warmup stays short; float32 so that its greedy answers
can be compared with transformers'. ``launch`` (``tests/conftest.py``) starts more instances
(with other flags) and stops whatever is left of them at the end of the session.

``text_generation_python`` is the interpreter of a venv holding the ``text-generation``
client (0.7.0 pins huggingface-hub < 1.0, which this environment cannot have), built once
under ``<repo>/.cache/clients-venv`` and reused while it stays valid.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import venv
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tgi_server.testing import LaunchedService

ROOT = Path(__file__).resolve().parents[2]
CLIENTS_VENV = ROOT / ".cache" / "clients-venv"
CLIENTS_LOCK = Path(__file__).with_name("clients-constraints.txt")
TEXT_GENERATION = "text-generation==0.7.0"


@pytest.fixture(scope="session")
def service(
    launch: Callable[..., LaunchedService], stop_and_check: Callable[[LaunchedService], None]
) -> Iterator[LaunchedService]:
    """The main instance: 2 workers, warmup on, 16 concurrent requests at most."""
    main = launch("main", "--workers", "2", "--max-concurrent-requests", "16")
    yield main
    stop_and_check(main)


def _venv_is_valid(python: Path) -> bool:
    if not python.exists():
        return False
    check = "import importlib.metadata as m, text_generation; print(m.version('text-generation'))"
    done = subprocess.run([python, "-c", check], capture_output=True, text=True, check=False)
    return done.returncode == 0 and done.stdout.strip() == TEXT_GENERATION.split("==")[1]


@pytest.fixture(scope="session")
def text_generation_python() -> Path:
    """The Python of the ``text-generation`` client's venv (built on first use)."""
    python = CLIENTS_VENV / "bin" / "python"
    CLIENTS_VENV.parent.mkdir(parents=True, exist_ok=True)
    with (CLIENTS_VENV.parent / "clients-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time across test sessions
        if not _venv_is_valid(python):
            venv.EnvBuilder(with_pip=True, clear=True).create(CLIENTS_VENV)
            install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            # The client has its own lock: the suite's (PIP_CONSTRAINT) pins a newer hub.
            environ = {k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"}  # noqa: TID251
            locked = [*install, "--constraint", str(CLIENTS_LOCK), TEXT_GENERATION]
            subprocess.run(locked, check=True, timeout=600, env=environ)
    assert _venv_is_valid(python)
    return python


@pytest.fixture(scope="session")
def client_script(text_generation_python: Path) -> Callable[..., str]:
    """``client_script(script, *args)``: run a script with the ``text-generation`` client
    installed; its stdout (the test fails on a non-zero exit)."""

    def run(script: str, *args: str, timeout_s: float = 300) -> str:
        done = subprocess.run(
            [text_generation_python, "-c", script, *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run
