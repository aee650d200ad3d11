"""A real headless Chromium renders ``/docs``: Swagger UI, from the app's own files, shows
the operations of our OpenAPI 3.1 document."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tgi_server.testing import Harness, ServedApp


@pytest.fixture
def served(harness: Harness) -> Iterator[ServedApp]:
    server = ServedApp(harness.app())
    yield server
    server.stop()


@pytest.mark.slow  # a real Chromium: a few seconds
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_a_headless_browser_renders_the_operations(served: ServedApp, tmp_path: Path) -> None:
    # The flags keep Chromium off the network (the machine has none) and from its profile.
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=15000",  # lets the page fetch the spec and render it
        "--dump-dom",
        f"{served.url}/docs",
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    paths = set(re.findall(r'data-path="([^"]+)"', dom))
    assert {"/generate", "/generate_stream", "/v1/chat/completions", "/metrics"} <= paths, dom[
        -2000:
    ]
    assert "Text Generation Inference" in dom
