"""``--prometheus-port``: TGI's second listener serves the same metrics as ``GET /metrics``."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tgi_server.testing import LaunchedService, free_port

pytestmark = pytest.mark.e2e

LAUNCHER = str(Path(sys.executable).with_name("text-generation-launcher"))


def get(port: int, path: str) -> tuple[int, str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        connection.close()


def families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_the_prometheus_port_serves_the_api_ports_metrics(service: LaunchedService) -> None:
    assert service.prometheus_port is not None
    status, content_type, text = get(service.prometheus_port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert {"tgi_request_count", "tgi_batch_current_size", "tgi_unwarmed_shapes"} <= families(text)
    assert families(text) == families(get(service.port, "/metrics")[2])
    assert get(service.prometheus_port, "/")[0] == 200  # any path, as TGI's exporter


def test_a_busy_prometheus_port_fails_before_the_model_loads() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused = subprocess.run(
            [LAUNCHER, "--hostname", "127.0.0.1", "--port", str(free_port()),
             "--prometheus-port", str(port)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert refused.returncode == 1
    assert f"cannot listen on --prometheus-port {port}: " in refused.stdout + refused.stderr
    assert "Starting the engine" not in refused.stdout + refused.stderr
