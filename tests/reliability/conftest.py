"""Fixtures of the reliability suite: real launchers on 127.0.0.1, and three streams that a
hostile request must leave untouched.

``launch`` and ``stop_and_check`` come from ``tests/conftest.py``; each module starts the
one service it needs, with its own flags. ``background_streams`` is the witness of every
hostile test: three plain ``/generate_stream`` requests, generating before the hostile
request goes out, must end with a 200, a final event with ``generated_text`` and no error
event.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tgi_server.testing import LaunchedService

STREAM_TOKENS = 24  # per background stream: a few seconds of generation on 2 cores


class Stream:
    """One ``/generate_stream`` on a thread: its status and SSE events."""

    def __init__(self, url: str, headers: dict[str, str], max_new_tokens: int) -> None:
        self.payload = {
            "inputs": "Tell me a story",
            "parameters": {"max_new_tokens": max_new_tokens},
        }
        self.url, self.headers = url, headers
        self.status: int | None = None
        self.events: list[dict[str, Any]] = []
        self.started = threading.Event()  # the first event came (or the stream failed)
        self.failure: Exception | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with httpx.stream(
                "POST", f"{self.url}/generate_stream", json=self.payload, headers=self.headers,
                timeout=300,
            ) as response:  # fmt: skip
                self.status = response.status_code
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        self.events.append(json.loads(line.removeprefix("data:")))
                        self.started.set()
        except Exception as failure:  # reported by the check
            self.failure = failure
        finally:
            self.started.set()

    def check_untouched(self) -> None:
        """It ended with a 200, a final event with ``generated_text``, no error event."""
        self.thread.join(300)
        assert not self.thread.is_alive(), "the stream did not end"
        assert (self.status, self.failure) == (200, None)
        assert not [event for event in self.events if "error" in event], self.events
        assert self.events and self.events[-1].get("generated_text") is not None, self.events
        assert len(self.events) == self.payload["parameters"]["max_new_tokens"], self.events


@contextlib.contextmanager
def _background_streams(
    service: LaunchedService, headers: dict[str, str] | None = None, *, count: int = 3
) -> Iterator[list[Stream]]:
    """``count`` streams generating when the block starts; on leaving it, each is checked
    untouched (run with ``TEXT_GENERATION_SERVER_IGNORE_EOS_TOKEN`` so that each lasts
    ``STREAM_TOKENS`` tokens exactly)."""
    streams = [Stream(service.url, headers or {}, STREAM_TOKENS) for _ in range(count)]
    for stream in streams:
        assert stream.started.wait(120) and stream.events, (stream.status, stream.failure)
    yield streams
    for stream in streams:
        stream.check_untouched()


BackgroundStreams = Callable[..., contextlib.AbstractContextManager[list[Stream]]]


@pytest.fixture(scope="session")
def background_streams() -> BackgroundStreams:
    """``with background_streams(service, headers):`` three streams generating when the
    block starts, each checked untouched when it ends."""
    return _background_streams
