"""Chaos against the real launcher: the engine killed or stopped, a Gunicorn worker killed.

Each test starts a service of its own (it does not survive the test): SmolLM2, warmup off,
EOS ignored so that generations last their ``max_new_tokens``. Every process is found by
PID under the launcher's tree, and whatever a test stopped or left is killed by PID at the
end (the ``launch`` fixture kills what is left of the launcher).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tgi_server.testing import LaunchedService, is_running, process_tree

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GONE = {
    "error": "Request failed during generation: Server error: the engine process disconnected",
    "error_type": "generation",
}
# What the brief promises, with no slack: the requests in flight answer within 1 s of the
# engine's death, the launcher exits within 10 s.
ANSWER_WITHIN_S = 1.0
EXIT_WITHIN_S = 10.0
STEP_TIMEOUT_S = 4.0  # the watchdog's deadline in the SIGSTOP test
LOAD_TOKENS = 200  # long enough to be killed mid-way on any machine
FAULT_ENV = {"WARMUP_ENABLED": "false", "TEXT_GENERATION_SERVER_IGNORE_EOS_TOKEN": "true"}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def engine_pid(service: LaunchedService) -> int:
    (pid,) = [p for p in process_tree(service.pid) if "tgi_server.engine" in _cmdline(p)]
    return pid


def gunicorn_workers(service: LaunchedService) -> set[int]:
    """The live workers: the Gunicorn master's children (they are in its tree only)."""
    gunicorns = {p for p in process_tree(service.pid) if "gunicorn" in _cmdline(p)}
    (master,) = [p for p in gunicorns if not any(p in process_tree(g) for g in gunicorns)]
    return {pid for pid in process_tree(master) if is_running(pid)}


def connections_per_worker(workers: set[int], port: int) -> dict[int, int]:
    """How many client connections to ``port`` each worker holds."""
    counts = {}
    for pid in workers:
        connections = psutil.Process(pid).net_connections(kind="tcp")
        counts[pid] = sum(
            1 for c in connections if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
        )
    return counts


class Call:
    """One request on a thread: its status and body (or SSE events), and when it ended."""

    def __init__(self, url: str, route: str, max_new_tokens: int) -> None:
        parameters = {"max_new_tokens": max_new_tokens, "details": True}
        self.payload = {"inputs": "Tell me a story", "parameters": parameters}
        self.url, self.route = url, route
        self.status: int | None = None
        self.body: Any = None
        self.events: list[dict[str, Any]] = []
        self.first_event = threading.Event()
        self.ended_at: float | None = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with httpx.stream("POST", self.url + self.route, json=self.payload, timeout=300) as r:
                self.status = r.status_code
                if self.route == "/generate_stream":
                    for line in r.iter_lines():
                        if line.startswith("data:"):
                            self.events.append(json.loads(line.removeprefix("data:")))
                            self.first_event.set()
                else:
                    r.read()
                    self.body = r.json()
        except Exception as error:  # reported by the test
            self.error = error
        finally:
            self.ended_at = time.monotonic()
            self.first_event.set()

    def join(self, timeout_s: float) -> None:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"{self.route} did not end"


@contextlib.contextmanager
def cleanup_pid(pid: int) -> Iterator[None]:
    """Whatever happens, ``pid`` (stopped or not) does not outlive the test."""
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


def start_load(service: LaunchedService) -> list[Call]:
    """Three streams and three plain requests, all generating when this returns."""
    calls = [Call(service.url, "/generate_stream", LOAD_TOKENS) for _ in range(3)]
    calls += [Call(service.url, "/generate", LOAD_TOKENS) for _ in range(3)]
    for call in calls[:3]:
        assert call.first_event.wait(120) and call.events, call.error
    # The plain requests went out with the streams; one more token proves they run too.
    first = len(calls[0].events)
    deadline = time.monotonic() + 60
    while len(calls[0].events) < first + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return calls


def test_engine_killed_under_load_every_request_answers_and_the_launcher_exits(
    launch: Any,
) -> None:
    service = launch("engine-kill", "--workers", "2", environ=FAULT_ENV)
    engine = engine_pid(service)
    with cleanup_pid(engine):
        calls = start_load(service)
        os.kill(engine, signal.SIGKILL)
        killed = time.monotonic()
        # Requests that arrive after the death are answered at once too (the launcher
        # keeps the listener open for a moment, so that they reach a worker).
        late = [
            Call(service.url, route, LOAD_TOKENS) for route in ("/generate_stream", "/generate")
        ]
        for call in calls + late:
            call.join(30)
        status = service.process.wait(30)
        exited = time.monotonic()
    for call in calls:
        assert call.error is None, call.error
        assert call.status == (200 if call.route == "/generate_stream" else 424)
        assert (call.events[-1] if call.route == "/generate_stream" else call.body) == GONE
        assert call.ended_at is not None and call.ended_at - killed < ANSWER_WITHIN_S
    for call in late:
        assert (call.status, call.error) == (200 if call.route == "/generate_stream" else 424, None)
        assert (call.events if call.route == "/generate_stream" else [call.body]) == [GONE]
        assert call.ended_at is not None and call.ended_at - killed < ANSWER_WITHIN_S
    assert status == 1
    assert exited - killed < EXIT_WITHIN_S
    assert "Engine crashed" in service.log()


def test_a_stopped_engine_fails_health_and_the_launcher_exits(launch: Any) -> None:
    environ = {**FAULT_ENV, "ENGINE_STEP_TIMEOUT": str(STEP_TIMEOUT_S)}
    service = launch("engine-stop", "--workers", "2", environ=environ)
    engine = engine_pid(service)
    with cleanup_pid(engine):
        stream = Call(service.url, "/generate_stream", LOAD_TOKENS)
        assert stream.first_event.wait(120) and stream.events, stream.error
        os.kill(engine, signal.SIGSTOP)
        stopped = time.monotonic()
        answers = []
        while service.process.poll() is None and time.monotonic() - stopped < 60:
            asked = time.monotonic()
            try:
                code = httpx.get(f"{service.url}/health", timeout=5).status_code
            except httpx.TransportError:
                break  # the launcher is stopping Gunicorn
            answers.append((code, time.monotonic() - asked, asked - stopped))
            if code == 503:
                break
            time.sleep(0.2)
        status = service.process.wait(EXIT_WITHIN_S + STEP_TIMEOUT_S + 5)
        stream.join(30)
    assert answers and answers[-1][0] == 503, answers
    assert all(code == 200 for code, _, _ in answers[:-1]), answers
    assert max(seconds for _, seconds, _ in answers) < 1.0, answers
    assert answers[-1][2] < STEP_TIMEOUT_S + 1.0, answers  # 503 once the deadline passed
    assert status == 1
    assert stream.events[-1] == GONE
    assert "ended no step" in service.log()


def _metrics(service: LaunchedService) -> dict[str, float]:
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("tgi_queue_size", "tgi_batch_current_size", "tgi_kv_blocks_used"):
            values[name] = float(value)
    return values


def test_a_killed_worker_is_replaced_and_its_requests_freed(launch: Any) -> None:
    service = launch("worker-kill", "--workers", "2", environ=FAULT_ENV)
    before = gunicorn_workers(service)
    assert len(before) == 2
    calls = start_load(service)
    # The kernel hands connections to whichever worker accepts first: add requests until
    # both workers hold some, so that killing one leaves requests that must complete.
    owners = connections_per_worker(before, service.port)
    while min(owners.values()) == 0 and len(calls) < 24:
        calls.append(Call(service.url, "/generate", LOAD_TOKENS))
        time.sleep(0.5)
        owners = connections_per_worker(before, service.port)
    assert min(owners.values()) > 0, owners
    victim = min(owners, key=lambda pid: owners[pid])
    os.kill(victim, signal.SIGKILL)
    for call in calls:  # a bound for a loaded machine: unloaded, they end within seconds
        call.join(300)
    # Connections the victim held are cut; everything else completes.
    survivors = [call for call in calls if call.error is None]
    assert survivors
    for call in survivors:
        assert call.status == 200
        last = call.body if call.route == "/generate" else call.events[-1]
        assert last["details"]["generated_tokens"] == LOAD_TOKENS
    # The service keeps serving: a new worker, and requests answered by both.
    deadline = time.monotonic() + 120
    while len(gunicorn_workers(service) - {victim}) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(gunicorn_workers(service) - {victim}) == 2
    after = [Call(service.url, "/generate", 8) for _ in range(8)]
    for call in after:
        call.join(120)
        assert (call.status, call.error) == (200, None)
    # The engine freed the victim's requests: nothing queued, running or holding blocks.
    assert _metrics(service) == {
        "tgi_queue_size": 0.0,
        "tgi_batch_current_size": 0.0,
        "tgi_kv_blocks_used": 0.0,
    }
    assert service.process.poll() is None
    assert service.stop() == 0
