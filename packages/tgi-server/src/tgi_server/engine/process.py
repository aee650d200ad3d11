"""The engine process: build and warm up the engine, bind its socket, serve until told to stop.

How the launcher runs it::

    socket_dir = make_socket_dir()                       # per-run, private
    path = socket_path(socket_dir)                       # <dir>/engine.sock
    process = start_engine_process(path, launcher_argv)  # python -m tgi_server.engine ...
    info = wait_until_ready(path, is_alive=lambda: process.poll() is None, timeout_s=...)
    ...                                                  # start the HTTP workers
    process.terminate(); process.wait()                  # SIGTERM: drain, then exit 0

``run_engine(settings, path)`` is the same body as a function (a ``multiprocessing``
'spawn' target). The engine binds its socket only once warmup is done, so "ready" means: it
answers a ``Hello`` with its ``EngineInfo`` (the ready message: model, KV blocks, the largest
supported total tokens, the limits, the warmup report). SIGTERM or SIGINT starts a drain
(new requests are refused, those in flight get ``graceful_termination_timeout`` seconds to
finish); a second signal ends the drain at once. The socket file is removed on the way out.

Next to the socket (``<path>.heartbeat``) the loop keeps its heartbeat, with the step deadline
(``ENGINE_STEP_TIMEOUT``): the launcher and the workers read it to tell a hung engine, which
cannot tell itself (``tgi_server.ipc.heartbeat``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

import zmq

from tgi_core.settings import HelpRequested, Settings, SettingsError
from tgi_scheduler import Engine
from tgi_server.engine.build import build_engine
from tgi_server.engine.loop import EngineLoop
from tgi_server.ipc.heartbeat import HeartbeatWriter, heartbeat_path
from tgi_server.ipc.messages import EngineInfo, Hello, HelloReply, decode_engine_message, encode
from tgi_server.ipc.sockets import RouterTransport, endpoint, new_identity
from tgi_server.logging_setup import configure_logging

__all__ = [
    "EngineStartupError",
    "main",
    "run_engine",
    "serve_engine",
    "start_engine_process",
    "wait_until_ready",
]

logger = logging.getLogger(__name__)

SOCKET_FLAG = "--engine-socket"
_READY_POLL_MS = 200


class EngineStartupError(RuntimeError):
    """The engine process exited before it was ready."""


def serve_engine(
    engine: Engine,
    info: EngineInfo,
    path: str | Path,
    *,
    drain_timeout_s: float = 90.0,
    step_timeout_s: float = 120.0,
) -> None:
    """Bind the engine socket at ``path`` and serve until SIGTERM/SIGINT and the drain end.

    ``step_timeout_s`` is the deadline the heartbeat's readers enforce. Signal handlers are
    installed only when called from the main thread.
    """
    with ExitStack() as cleanup:
        heartbeat = HeartbeatWriter(heartbeat_path(path), step_timeout_s)
        cleanup.callback(heartbeat.close)
        transport = RouterTransport(path)
        cleanup.callback(transport.close)
        loop = EngineLoop(
            engine, transport, info, drain_timeout_s=drain_timeout_s, heartbeat=heartbeat.beat
        )
        with _stop_on_signals(loop):
            logger.info("engine ready on %s (pid %d)", endpoint(path), info.pid)
            loop.run()
    logger.info("engine stopped")


def run_engine(settings: Settings, path: str | Path) -> None:
    """The engine process's body: build, warm up, then ``serve_engine`` (a 'spawn' target)."""
    configure_logging(settings.log_level, json_output=settings.json_output)
    ready = build_engine(settings)
    try:
        serve_engine(
            ready.engine,
            ready.info,
            path,
            drain_timeout_s=float(settings.graceful_termination_timeout),
            step_timeout_s=settings.engine_step_timeout,
        )
    finally:  # after SIGTERM's drain too: the runner writes what must outlive the process
        ready.close()  # and the shard processes stop


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tgi_server.engine --engine-socket PATH [launcher flags...]``.

    Started by the launcher, it decodes the launcher's settings (``TGI_SETTINGS``) and takes no
    flags; started by hand, it reads flags and variables as the launcher does.
    """
    parser = argparse.ArgumentParser(prog="python -m tgi_server.engine", add_help=False)
    parser.add_argument(SOCKET_FLAG, required=True, type=Path, dest="socket")
    known, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_parent(rest)
    except HelpRequested:
        print("usage: python -m tgi_server.engine --engine-socket PATH [launcher flags...]")
        print("the flags are text-generation-launcher's: see its --help")
        return 0
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from tgi_hpu_kernels.parallel import GroupJoinError

    try:
        run_engine(settings, known.socket)
    except GroupJoinError as error:  # a node missing: one line, as on the other nodes
        logger.error("%s", error)
        return 1
    return 0


def start_engine_process(
    path: str | Path,
    argv: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> subprocess.Popen[bytes]:
    """Start ``python -m tgi_server.engine`` serving at ``path``, with launcher flags ``argv``.

    The child decodes the settings in ``env``'s ``TGI_SETTINGS`` (``Settings.child_environ``),
    else reads them from ``argv`` and ``env`` (default: this process's environment) exactly as
    the launcher does. Stop it with ``terminate()`` (SIGTERM: drain).
    """
    command = [python, "-m", "tgi_server.engine", SOCKET_FLAG, str(path), *argv]
    return subprocess.Popen(command, env=None if env is None else dict(env))


def wait_until_ready(
    path: str | Path, *, is_alive: Callable[[], bool], timeout_s: float = 600.0
) -> EngineInfo:
    """Wait until the engine at ``path`` answers ``Hello``; return its ``EngineInfo``.

    Args:
        path: the engine socket.
        is_alive: tells whether the engine process still runs (``lambda: p.poll() is None``).
        timeout_s: how long model loading and warmup may take.

    Raises:
        EngineStartupError: the process exited first.
        TimeoutError: it did not answer within ``timeout_s``.
    """
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.IDENTITY, new_identity(0))
    deadline = time.monotonic() + timeout_s
    try:
        # Queued until the engine binds: it binds only once warmup is done.
        socket.connect(endpoint(path))
        socket.send(encode(Hello(pid=os.getpid(), nonce=0)))
        while time.monotonic() < deadline:
            if socket.poll(_READY_POLL_MS):
                reply = decode_engine_message(socket.recv())
                if isinstance(reply, HelloReply):
                    return reply.info
            elif not is_alive():
                raise EngineStartupError("the engine process exited before it was ready")
        raise TimeoutError(f"the engine was not ready after {timeout_s} s")
    finally:
        socket.close()
        context.term()


@contextmanager
def _stop_on_signals(loop: EngineLoop) -> Iterator[None]:
    """SIGTERM/SIGINT: drain; a second signal: stop now. Restores the old handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        logger.info("signal %d: %s", signum, "draining" if len(received) == 1 else "stopping")
        loop.request_stop(drain=len(received) == 1)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
