"""``text-generation-launcher``: TGI's launcher, with its flags, start-up order and supervision.

``main`` parses the settings (``--help``, ``--version`` and errors as clap prints them, exit
status 2 for a bad flag), sets up logging (``LOG_LEVEL``, ``--json-output``), logs the runtime
environment with ``-e/--env``, then ``Launcher(settings).run()``:

1. the engine process (``python -m tgi_server.engine``: scheduler + runner, rank 0), started
   with the launcher's resolved settings encoded in one variable (``Settings.child_environ``);
2. wait while it loads the model and warms up: it answers on its socket only when ready;
3. Gunicorn (``gunicorn -c python:tgi_server.gunicorn_conf tgi_server.asgi:app``), W uvicorn
   workers on ``--hostname:--port``, in its own process group;
4. wait until ``GET /health`` answers 200, then log ``Connected`` (TGI's line); from then
   on ``--prometheus-port`` serves the metrics too (bound before anything starts, so a
   busy port fails at once; see ``tgi_server.metrics_listener``);
5. supervise: if either child exits, stop the other and exit 1. So does a hung engine: the
   watchdog reads the engine loop's heartbeat (``tgi_server.ipc.heartbeat``), and when no
   step ended within ``ENGINE_STEP_TIMEOUT`` (an endless step, a stuck collective, a stopped
   process) it kills the engine. After a failure nothing can be served: the workers, which
   know the engine is gone, answer 424 and /health 503 for ``_FAILURE_LINGER_S`` (so load
   balancers see it), then the survivors get ``_FAILURE_GRACE_S`` to stop before they are
   killed, so an orchestrator restarts the service promptly. SIGTERM or SIGINT
   drains instead: Gunicorn first (its workers finish their requests within
   ``--graceful-termination-timeout``, the engine still serving them), then the engine;
   whatever is still alive at the deadline is killed. Exit 0.

The socket and metrics folders are per-run temporary folders, removed on the way out.
Tensor-parallel shards (``--num-shard`` > 1) are the engine's children
(``tgi_server.engine.shard_supervision``): it starts its node's ranks, stops them on the way
out, and exits 1 when one dies or a node is lost (so supervision stops the rest). With
``--nnodes`` > 1, the launchers of nodes 1.. run their shards only (``tgi_server.shard_node``).
The HTTP app itself is ``tgi_server.asgi``; the engine process, ``tgi_server.engine``.
"""

from __future__ import annotations

import dataclasses
import http.client
import importlib.metadata
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from tgi_core.settings import HelpRequested, Settings, SettingsError, render_help
from tgi_server.__about__ import __version__
from tgi_server.engine import EngineStartupError, start_engine_process, wait_until_ready
from tgi_server.ipc import HeartbeatReader, heartbeat_path, make_socket_dir, socket_path
from tgi_server.logging_setup import configure_logging
from tgi_server.metrics_listener import MetricsListener

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "Launcher", "main", "runtime_environment"]

logger = logging.getLogger(__name__)

EXIT_FAILURE = 1
EXIT_USAGE = 2  # clap's status for a bad argument
GUNICORN_APP = "tgi_server.asgi:app"
GUNICORN_CONFIG = "python:tgi_server.gunicorn_conf"
_POLL_S = 0.1
_HTTP_READY_TIMEOUT_S = 300.0  # workers booting: imports, tokenizer, connecting the engine
_GUNICORN_KILL_MARGIN_S = 5.0  # Gunicorn kills its own workers at the deadline; then us
_ENGINE_MIN_WAIT_S = 10.0  # the engine's drain after Gunicorn's: nothing left in flight
_FAILURE_LINGER_S = 2.0  # after a crash: /health answers 503 before the listener closes
_FAILURE_GRACE_S = 3.0  # then: time for the survivors to stop


class StartupError(RuntimeError):
    """The service could not start (a child exited or never became ready)."""


def runtime_environment() -> str:
    """What ``-e/--env`` logs: platform, versions and the accelerators' tools' output."""
    lines = [
        "Runtime environment:",
        f"Target: {platform.machine()}-{platform.system().lower()}",
        f"Python version: {platform.python_version()}",
        f"tgi-server version: {__version__}",
        f"torch version: {_package_version('torch')}",
        "Commit sha: N/A",
        "Docker label: N/A",
    ]
    tools = (("nvidia-smi", ["nvidia-smi"]), ("xpu-smi", ["xpu-smi", "discovery"]))
    for title, command in (*tools, ("hpu-smi", ["hl-smi"])):
        lines.append(f"{title}:\n{_tool_output(command)}")
    return "\n".join(lines)


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "N/A"


def _tool_output(command: list[str]) -> str:
    if shutil.which(command[0]) is None:
        return "N/A"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "N/A"
    return done.stdout.strip().replace("\n", "\n   ") or "N/A"


class Child:
    """A supervised child process, stopped by its PID (or its process group's)."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], *, group: bool) -> None:
        self.name = name
        self.process = process
        self._group = group  # leads its own process group: signals reach its workers too

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, deadline: float) -> int:
        """SIGTERM, wait until ``deadline`` (monotonic), then SIGKILL; the exit status."""
        if self.alive():
            logger.info("Terminating %s (pid %d)", self.name, self.pid)
            self._signal(signal.SIGTERM)
            while self.alive() and time.monotonic() < deadline:
                time.sleep(_POLL_S)
        if self.alive():
            logger.warning("Killing %s (pid %d)", self.name, self.pid)
        if self._group:
            # Also reaps workers left behind if the master itself died.
            self._signal(signal.SIGKILL)
        elif self.alive():
            self.process.kill()
        status = self.process.wait()
        logger.info("%s terminated (exit status %d)", self.name, status)
        return status

    def _signal(self, signum: signal.Signals) -> None:
        try:
            if self._group:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass


class Launcher:
    """Runs the service until a signal or a child's death (see the module docstring).

    Args:
        settings: the resolved settings; the children receive them encoded, once.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = settings.server()
        self._stop = threading.Event()
        self._children: list[Child] = []
        self._temp_dirs: list[Path] = []
        self._metrics_listener: MetricsListener | None = None
        self._heartbeat: HeartbeatReader | None = None
        self._failed = False

    def run(self) -> int:
        """Start, serve, shut down; the exit status (0 after a signal, 1 after a failure)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            status = self._serve()
            self._failed = status != 0
            return status
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _serve(self) -> int:
        try:
            self._start()
        except StartupError as error:
            if self._stop.is_set():
                logger.info("Stopped during start-up")
                return 0
            logger.error("%s", error)
            return EXIT_FAILURE
        return EXIT_FAILURE if self._supervise() else 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._stop.is_set():
            logger.info("Received %s: shutting down", signal.Signals(signum).name)
        self._stop.set()

    def _start(self) -> None:
        self._metrics_listener = self._bind_metrics_listener()
        socket_dir = make_socket_dir()
        metrics_dir = Path(tempfile.mkdtemp(prefix="tgi-metrics-"))
        self._temp_dirs += [socket_dir, metrics_dir]
        path = socket_path(socket_dir)
        engine = self._start_engine(path)
        started = time.monotonic()
        logger.info("Waiting for the engine to load %s and warm up", self.settings.model_id)
        try:
            info = wait_until_ready(
                path,
                is_alive=lambda: engine.alive() and not self._stop.is_set(),
                timeout_s=math.inf,
            )
        except EngineStartupError as error:
            raise StartupError(f"{engine.name} exited before it was ready") from error
        self._heartbeat = HeartbeatReader(heartbeat_path(path))
        warmup = info.warmup
        logger.info(
            "Engine ready in %.1f s: %d KV blocks of %d tokens, %s shapes warmed up",
            time.monotonic() - started,
            info.num_kv_blocks,
            info.block_size,
            "no" if warmup is None else warmup.num_shapes,
        )
        served = dataclasses.replace(
            self.settings, engine_socket=str(path), metrics_dir=str(metrics_dir)
        )
        self._start_webserver(served.child_environ())
        self._wait_for_http()
        if self._metrics_listener is not None:
            self._metrics_listener.start()
        logger.info("Connected")

    def _bind_metrics_listener(self) -> MetricsListener:
        port = self.server.prometheus_port
        try:
            listener = MetricsListener(
                self.server.hostname, port, _probe_host(self.server.hostname), self.server.port
            )
        except OSError as error:
            raise StartupError(f"cannot listen on --prometheus-port {port}: {error}") from error
        logger.info("Serving metrics on %s:%d", self.server.hostname, listener.port)
        return listener

    def _start_engine(self, path: Path) -> Child:
        logger.info("Starting the engine (rank 0)")
        engine = Child(
            "engine", start_engine_process(path, env=self.settings.child_environ()), group=False
        )
        self._children.append(engine)
        return engine

    def _start_webserver(self, environ: dict[str, str]) -> None:
        command = [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, GUNICORN_APP]
        logger.info(
            "Starting the webserver: Gunicorn, %d worker(s) on %s:%d",
            self.server.workers,
            self.server.hostname,
            self.server.port,
        )
        # Its own session: a terminal's Ctrl-C reaches the launcher, which drains Gunicorn
        # gracefully (Gunicorn's own SIGINT handling is a quick, non-graceful stop).
        process = subprocess.Popen(command, env=environ, start_new_session=True)
        self._children.append(Child("webserver", process, group=True))

    def _wait_for_http(self) -> None:
        host = _probe_host(self.server.hostname)
        deadline = time.monotonic() + _HTTP_READY_TIMEOUT_S
        while not _health_ok(host, self.server.port):
            self._raise_if_dead_or_stopping()
            if time.monotonic() > deadline:
                raise StartupError(
                    f"the webserver did not answer /health in {_HTTP_READY_TIMEOUT_S} s"
                )
            self._stop.wait(_POLL_S)

    def _raise_if_dead_or_stopping(self) -> None:
        if self._stop.is_set():
            raise StartupError("stopped during start-up")
        for child in self._children:
            if not child.alive():
                raise StartupError(
                    f"{child.name} exited during start-up ({child.process.returncode})"
                )

    def _supervise(self) -> bool:
        """Wait for a stop signal (False), or a child's exit or a hung engine (True)."""
        while not self._stop.wait(_POLL_S):
            for child in self._children:
                if not child.alive():
                    logger.error(
                        "%s crashed (pid %d, exit status %d)",
                        child.name.capitalize(),
                        child.pid,
                        child.process.returncode,
                    )
                    return True
            if self._engine_hung():
                return True
        return False

    def _engine_hung(self) -> bool:
        """The watchdog: kill an engine whose step outlived ``ENGINE_STEP_TIMEOUT``."""
        overdue = None if self._heartbeat is None else self._heartbeat.overdue()
        if overdue is None:
            return False
        engine = self._children[0]
        logger.error(
            "The engine (pid %d) ended no step in %.1f s (ENGINE_STEP_TIMEOUT %s s): killing it",
            engine.pid,
            overdue,
            self.settings.engine_step_timeout,
        )
        engine.process.kill()  # SIGKILL: a hung (or stopped) process handles nothing else
        return True

    def _shutdown(self) -> None:
        """Stop the children (webserver first, then the engine), remove the temp dirs."""
        if self._failed and any(c.name == "webserver" and c.alive() for c in self._children):
            self._stop.wait(_FAILURE_LINGER_S)
        deadline = time.monotonic() + self.server.graceful_termination_timeout
        for child in reversed(self._children):  # the engine started first: it stops last
            if self._failed:
                child.stop(time.monotonic() + _FAILURE_GRACE_S)
                continue
            margin = _GUNICORN_KILL_MARGIN_S if child.name == "webserver" else _ENGINE_MIN_WAIT_S
            child.stop(max(deadline, time.monotonic()) + margin)
        if self._heartbeat is not None:
            self._heartbeat.close()
        if self._metrics_listener is not None:
            self._metrics_listener.close()
        for folder in self._temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        logger.info("Shutdown complete")


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _probe_host(hostname: str) -> str:
    """Where to reach our own listener: loopback for a wildcard address."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(hostname, hostname)


def _health_ok(host: str, port: int) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    """The ``text-generation-launcher`` console script; returns the exit status."""
    try:
        settings = Settings.from_process(argv)
    except HelpRequested as request:
        if request.kind == "help":
            sys.stdout.write(render_help())
        else:
            print(f"text-generation-launcher {__version__}")
        return 0
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, json_output=settings.json_output)
    if settings.env:
        logger.info("%s", runtime_environment())
    logger.info("%r", settings)
    if settings.node_rank > 0:  # --nnodes > 1: rank 0's node serves; this one runs shards
        from tgi_server.shard_node import ShardNode

        return ShardNode(settings).run()
    return Launcher(settings).run()


if __name__ == "__main__":
    raise SystemExit(main())
