"""Fixtures of the reliability suite: real launchers on 127.0.0.1, and three streams that a
hostile request must leave untouched.

``launch`` starts the real ``text-generation-launcher`` on the embedded SmolLM2 with the
small limits of the end-to-end tests (a few seconds of warmup at most) and kills whatever is
left of it at the end of the session; each module starts the one service it needs, with its
own flags. ``background_streams`` is the witness of every hostile test: three plain
``/generate_stream`` requests, generating before the hostile request goes out, must end
with a 200, a final event with ``generated_text`` and no error event.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest

from tgi_server.testing import LaunchedService, is_running, launch_service, process_tree

# The end-to-end tests' limits: small, so that the engine starts in 15-50 s on 2 cores.
LIMITS_ARGV = (
    "--dtype", "float32",
    "--max-input-tokens", "256", "--max-total-tokens", "512",
    "--max-batch-prefill-tokens", "512", "--max-batch-size", "16",
)  # fmt: skip
BUCKETS_ENV = {
    "PAD_SEQUENCE_TO_MULTIPLE_OF": "256",
    "BATCH_BUCKET_SIZE": "16",
    "PREFILL_BATCH_BUCKET_SIZE": "16",
    "LOG_LEVEL": "info",
}
STREAM_TOKENS = 24  # per background stream: a few seconds of generation on 2 cores

Launch = Callable[..., LaunchedService]
_STARTED: dict[str, LaunchedService] = {}  # by name, for the failure reports


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report shows the end of each service's log."""
    report: pytest.TestReport = yield
    if report.failed:
        for name, service in _STARTED.items():
            report.sections.append((f"launcher log: {name}", service.log()[-6000:]))
    return report


@pytest.fixture(scope="session")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch]:
    """``launch(name, *argv, limits=..., environ={...})``: a launcher with ``limits``
    (``LIMITS_ARGV`` by default: the launcher refuses a flag given twice) and ``argv``;
    killed (with its children) at the end of the session if still running."""

    def start(
        name: str,
        *argv: str,
        limits: Sequence[str] = LIMITS_ARGV,
        environ: dict[str, str] | None = None,
    ) -> LaunchedService:
        log_path = tmp_path_factory.mktemp(name) / "launcher.log"
        service = launch_service(
            [*limits, *argv], log_path=log_path, environ={**BUCKETS_ENV, **(environ or {})}
        )
        print(f"\n{name}: Connected after {service.startup_s:.1f} s", file=sys.stderr)
        _STARTED[name] = service
        return service

    yield start
    for service in _STARTED.values():
        if service.process.poll() is None:
            service.kill()


def _stop_and_check(service: LaunchedService) -> None:
    """SIGTERM, exit 0, and nothing it started survives."""
    tree = process_tree(service.pid)
    status = service.stop()
    survivors = [pid for pid in tree if is_running(pid)]
    assert (status, survivors) == (0, []), service.log()[-4000:]


@pytest.fixture(scope="session")
def stop_and_check() -> Callable[[LaunchedService], None]:
    """``stop_and_check(service)``: SIGTERM, exit 0, and nothing it started survives (a
    module stops its service when done, so that the next one has the cores)."""
    return _stop_and_check


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
