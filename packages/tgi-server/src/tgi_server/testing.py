"""Test harness for the HTTP app: a scripted engine on a thread, apps over it, stream drivers.

``Harness`` runs a real ``tgi_scheduler.Engine`` on a thread (``InProcessEngine``) over a
``ControlledRunner``, tgi_scheduler's ``FakeRunner`` (each token is the previous id + 1, with
logprob -0.5) that a test can slow down (to hold requests open) or break (every step
raises, as a failing device would). ``Harness.app()`` builds a real app over it with its own
engine client, as each Gunicorn worker has. Streamed requests go through the ASGI interface
with Falcon's test emitters (``OpenStream``), so a test decides when its client goes away;
``sse_events`` checks the SSE framing byte for byte.

The real model's tokenizer comes from the embedded SmolLM2 GGUF (``smollm2_tokenizer``,
re-exported from ``tgi_core.testing``).

For end-to-end tests, ``launch_service`` starts the real ``text-generation-launcher`` as a
subprocess and waits for its ``Connected`` line; ``LaunchedService`` stops it by PID and
``process_tree`` lists what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon.asgi
import falcon.testing

from tgi_core.contract import ModelRunner, StepOutput, StepPlan
from tgi_core.engine_stats import SchedulerStats
from tgi_core.settings.resolve import EMBEDDED_MODEL_FILE
from tgi_core.settings.slices import SchedulerSettings, ServerSettings, ValidationLimits
from tgi_core.testing import smollm2_gguf, smollm2_tokenizer
from tgi_core.tokenization import Tokenizer, TokenizerLike
from tgi_scheduler import Engine
from tgi_scheduler.testing import FakeRunner
from tgi_server.app import ModelInfo, create_app
from tgi_server.engine import InProcessEngine, describe_engine
from tgi_server.engine.build import make_stop_checker_factory
from tgi_server.engine_client import InProcessEngineClient

__all__ = [
    "HARNESS_LIMITS",
    "SMOLLM2_GGUF",
    "ControlledRunner",
    "Harness",
    "LaunchedService",
    "OpenStream",
    "free_port",
    "is_running",
    "launch_service",
    "process_tree",
    "read_stream",
    "smollm2_gguf",
    "smollm2_tokenizer",
    "sse_events",
    "start_inprocess_engine",
    "stream_request",
]

SMOLLM2_GGUF = EMBEDDED_MODEL_FILE
HARNESS_LIMITS = ValidationLimits(
    max_input_tokens=64, max_total_tokens=96, enable_prefill_logprobs=True
)
"""The request limits of ``Harness`` apps (and of its scheduler); prefill logprobs allowed."""

App = falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]


class ControlledRunner(FakeRunner):
    """A ``FakeRunner`` that a test can slow down or break while the engine runs.

    ``step_delay_s``: each step sleeps this long first. ``broken``: while set, every step
    raises (through ``FakeRunner``'s ``fail_step_ids``, which keeps its books straight).
    """

    def __init__(self, vocab_size: int) -> None:
        super().__init__(num_kv_blocks=64, block_size=16, vocab_size=vocab_size)
        self.step_delay_s = 0.0
        self.broken = threading.Event()

    def execute(self, plan: StepPlan) -> StepOutput:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        if self.broken.is_set():
            self.fail_step_ids.add(plan.step_id)
        return super().execute(plan)

    def reset(self) -> None:
        """Back to full speed, not broken."""
        self.step_delay_s = 0.0
        self.broken.clear()


def start_inprocess_engine(
    runner: ModelRunner, tokenizer: Tokenizer, scheduler: SchedulerSettings
) -> InProcessEngine:
    """An engine over ``runner`` (warmed up) running on a thread, as the unit tests use it."""
    engine = Engine.create(
        scheduler,
        runner,
        eos_token_ids=tokenizer.eos_token_ids,
        stop_checker_factory=make_stop_checker_factory(tokenizer),
    )
    info = describe_engine(engine, engine.warmup(), model_id="smollm2")
    return InProcessEngine(engine, info).start()


class Harness:
    """An engine on a thread over a ``ControlledRunner``, and apps over it.

    Args:
        max_concurrent_requests: the engine's admission limit (429 beyond it).
        tokenizer: the tokenizer of the engine and the apps; SmolLM2's by default.

    Stop it with ``stop()``.
    """

    def __init__(
        self, *, max_concurrent_requests: int = 16, tokenizer: Tokenizer | None = None
    ) -> None:
        self.tokenizer = tokenizer or smollm2_tokenizer()
        self.runner = ControlledRunner(vocab_size=self.tokenizer.vocab_size)
        scheduler = SchedulerSettings(
            max_concurrent_requests=max_concurrent_requests,
            max_batch_size=4,
            max_batch_prefill_tokens=256,
            max_input_tokens=HARNESS_LIMITS.max_input_tokens,
            max_total_tokens=HARNESS_LIMITS.max_total_tokens,
            batch_bucket_size=4,
            prefill_batch_bucket_size=4,
            pad_sequence_to_multiple_of=16,
            block_size=16,
            queue_policy="fifo",
        )
        self.engine = start_inprocess_engine(self.runner, self.tokenizer, scheduler)
        self.info = self.engine.info

    def app(self, tokenizer: TokenizerLike | None = None, **settings: Any) -> App:
        """A new app (with its own engine client) over the engine; ``settings`` are
        ``ServerSettings`` fields (model ``smollm2``, ``HARNESS_LIMITS`` by default)."""
        server = ServerSettings(**{"model_id": "smollm2", "limits": HARNESS_LIMITS, **settings})
        client = InProcessEngineClient(self.engine)
        return create_app(
            server, client, tokenizer or self.tokenizer, ModelInfo.from_engine_info(self.info)
        )

    def client(self, **settings: Any) -> falcon.testing.TestClient:
        """A ``TestClient`` over a new ``app(**settings)``."""
        return falcon.testing.TestClient(self.app(**settings))

    def wait_until_idle(self) -> SchedulerStats:
        """The engine's stats once nothing runs (an abort takes a step or two to land)."""

        async def poll() -> SchedulerStats:
            client = InProcessEngineClient(self.engine)
            for _ in range(100):
                stats = (await client.stats()).engine
                if stats.batch_size == 0 and stats.queue_size == 0:
                    break
                await asyncio.sleep(0.02)
            return stats

        return asyncio.run(poll())

    def stop(self) -> None:
        self.engine.stop()


class OpenStream:
    """A streamed POST in flight: the app runs as a task, the test plays the client.

    Create it inside a running event loop.
    """

    def __init__(self, app: App, path: str, payload: Any) -> None:
        body = json.dumps(payload).encode()
        scope = falcon.testing.create_scope(
            path=path,
            method="POST",
            headers={"content-type": "application/json"},
            content_length=len(body),
        )
        self.emitter = falcon.testing.ASGIRequestEventEmitter(body, disconnect_at=time.time() + 600)
        self.collector = falcon.testing.ASGIResponseEventCollector()
        self.task = asyncio.ensure_future(app(scope, self.emitter, self.collector))

    @property
    def body(self) -> bytes:
        return b"".join(self.collector.body_chunks)

    async def wait_for(self, data: bytes) -> None:
        """Until ``data`` appears in the body (the request must still be running)."""
        while data not in self.body:
            assert not self.task.done(), self.body
            await asyncio.sleep(0.01)

    async def finish(self, *, disconnect: bool = False, timeout_s: float = 60) -> bytes:
        """Wait for the answer to end (after the client leaves, with ``disconnect``)."""
        if disconnect:
            self.emitter.disconnect()
        await asyncio.wait_for(self.task, timeout_s)
        return self.body


def stream_request(
    app: App, path: str, payload: Any, *, timeout_s: float = 60
) -> falcon.testing.ASGIResponseEventCollector:
    """POST ``payload`` and collect the whole streamed answer (status, headers, body)."""

    async def scenario() -> falcon.testing.ASGIResponseEventCollector:
        stream = OpenStream(app, path, payload)
        await stream.finish(timeout_s=timeout_s)
        return stream.collector

    return asyncio.run(scenario())


def read_stream(
    app: App, path: str, payload: Any, *, timeout_s: float = 60
) -> tuple[falcon.testing.ASGIResponseEventCollector, bytes]:
    """``stream_request``, with the body joined."""
    collector = stream_request(app, path, payload, timeout_s=timeout_s)
    return collector, b"".join(collector.body_chunks)


def sse_events(body: bytes) -> list[Any]:
    """The data of each SSE event (``[DONE]`` kept as the string); asserts exact framing:
    every event is one ``data: `` line followed by a blank line."""
    text = body.decode()
    assert text.endswith("\n\n"), text
    parsed = []
    for event in text[:-2].split("\n\n"):
        assert event.startswith("data: ") and "\n" not in event, event
        data = event.removeprefix("data: ")
        parsed.append(data if data == "[DONE]" else json.loads(data))
    return parsed


# --- the real launcher, as a subprocess ------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def process_tree(pid: int) -> set[int]:
    """The PIDs of ``pid``'s descendants (from ``/proc``; Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The parent id is the 2nd field after the command name, which is in parentheses.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def is_running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class LaunchedService:
    """A ``text-generation-launcher`` process serving on ``127.0.0.1:port``."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    startup_s: float  # from start to the ``Connected`` line
    prometheus_port: int | None = None  # the second listener's (``--prometheus-port``)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """Everything the service printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, *, timeout_s: float = 120) -> int:
        """Send ``signum`` to the launcher and wait for it; past ``timeout_s``, kill it and
        everything it started. Returns the launcher's exit status."""
        tree = process_tree(self.pid)
        if self.process.poll() is None:
            os.kill(self.pid, signum)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill(tree)
            raise

    def kill(self, tree: set[int] | None = None) -> None:
        """SIGKILL the launcher and its descendants (``tree``, found now if None), by PID."""
        for pid in (*(process_tree(self.pid) if tree is None else tree), self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(30)


def launch_service(
    argv: Sequence[str],
    *,
    log_path: Path,
    environ: Mapping[str, str] | None = None,
    port: int | None = None,
    ready_timeout_s: float = 300,
) -> LaunchedService:
    """Start ``text-generation-launcher --hostname 127.0.0.1 --port PORT *argv`` and wait
    for its ``Connected`` line (``--prometheus-port`` is a free port unless ``argv`` names
    one).

    Args:
        argv: more launcher flags.
        log_path: where its stdout and stderr go.
        environ: variables added to the inherited environment (``/usr/bin/env`` adds them).
        port: the port to serve on; a free one by default.
        ready_timeout_s: how long model loading, warmup and Gunicorn may take.

    Raises:
        RuntimeError: it exited, or did not connect in time (it is then stopped).
    """
    port = port or free_port()
    launcher = Path(sys.executable).with_name("text-generation-launcher")
    assignments = [f"{name}={value}" for name, value in (environ or {}).items()]
    command = ["env", *assignments, str(launcher), "--hostname", "127.0.0.1", "--port", str(port)]
    if "--prometheus-port" in argv:
        prometheus_port = int(argv[list(argv).index("--prometheus-port") + 1])
    else:  # TGI's default 9000 may be taken (another service)
        prometheus_port = free_port()
        command += ["--prometheus-port", str(prometheus_port)]
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen([*command, *argv], stdout=log, stderr=subprocess.STDOUT)
    service = LaunchedService(process, port, log_path, 0.0, prometheus_port)
    while '"Connected"' not in (text := service.log()) and ": Connected\n" not in text:
        if process.poll() is not None or time.monotonic() - started > ready_timeout_s:
            service.kill()
            raise RuntimeError(f"the launcher did not connect (exit {process.poll()}):\n{text}")
        time.sleep(0.2)
    service.startup_s = time.monotonic() - started
    return service


class ServedApp:
    """An ASGI app served by uvicorn on a free port of 127.0.0.1, on a thread (real sockets,
    uvicorn's own parsing and disconnects). ``stop`` ends it."""

    def __init__(self, app: Any) -> None:
        import uvicorn  # only the socket-level tests need it

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline and self._thread.is_alive()
            time.sleep(0.01)
        self.port: int = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)
