"""SIGTERM drains: a stream in flight finishes, then everything stops and the launcher exits 0.

A service of its own (it does not survive the test): two workers, warmup off, EOS ignored so
the stream lasts exactly its 32 tokens, and a 120 s graceful timeout, far more than the
stream needs even on a busy machine.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from typing import Any

import httpx
import pytest

from tgi_server.testing import is_running, process_tree

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NUM_NEW_TOKENS = 32


def test_sigterm_lets_the_stream_in_flight_finish(launch: Any) -> None:
    service = launch(
        "shutdown",
        "--workers", "2", "--graceful-termination-timeout", "120",
        environ={"WARMUP_ENABLED": "false", "TEXT_GENERATION_SERVER_IGNORE_EOS_TOKEN": "true"},
    )  # fmt: skip
    tree = process_tree(service.pid)
    assert len(tree) >= 4  # the engine, the Gunicorn master and its two workers
    payload = {"inputs": "Hi", "parameters": {"max_new_tokens": NUM_NEW_TOKENS, "details": True}}
    events = []
    with httpx.stream("POST", f"{service.url}/generate_stream", json=payload, timeout=120) as reply:
        lines = (line for line in reply.iter_lines() if line)
        events.append(json.loads(next(lines).removeprefix("data: ")))
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        events += [json.loads(line.removeprefix("data: ")) for line in lines]
    assert [event["index"] for event in events] == list(range(1, NUM_NEW_TOKENS + 1))
    assert events[-1]["details"]["finish_reason"] == "length"
    assert events[-1]["generated_text"]
    assert service.process.wait(150) == 0
    assert time.monotonic() - signalled < 130  # within the graceful timeout (and margin)
    assert not [pid for pid in tree if is_running(pid)]
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", service.port)),
    ):
        pass
    log = service.log()
    assert "Received SIGTERM" in log and "Shutdown complete" in log
