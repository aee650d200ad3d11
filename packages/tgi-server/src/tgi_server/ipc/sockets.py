"""ZeroMQ sockets between the engine process and the HTTP workers.

The engine binds one ROUTER on ``ipc://<dir>/engine.sock``; each worker process connects one
DEALER with a unique identity, so the ROUTER can address a worker's ``StepEvents`` to it.
``RouterTransport`` is the engine's side (synchronous ``zmq``, never blocking on a worker);
``connect_dealer`` builds a worker's side for ``zmq.asyncio``. The socket directory is
per-run: ``make_socket_dir`` creates it, ``socket_path`` names the socket inside it.

The engine loop (``tgi_server.engine.loop``) and the clients (``tgi_server.engine_client``)
use these; nothing here knows about requests beyond the message codec.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import uuid
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio

from tgi_server.ipc.messages import (
    EngineMessage,
    WorkerMessage,
    decode_worker_message,
    encode,
)

__all__ = [
    "MAX_SOCKET_PATH_BYTES",
    "SOCKET_NAME",
    "RouterTransport",
    "connect_dealer",
    "endpoint",
    "make_socket_dir",
    "new_identity",
    "socket_path",
]

logger = logging.getLogger(__name__)

SOCKET_NAME = "engine.sock"
# sockaddr_un.sun_path is 108 bytes on Linux, one of them the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
# How long close() waits to flush the last StepEvents to workers.
_CLOSE_LINGER_MS = 1000


def make_socket_dir(prefix: str = "tgi-engine-") -> Path:
    """Create a private, per-run directory for the engine socket (mode 0700)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def socket_path(socket_dir: str | Path) -> Path:
    """The engine socket inside ``socket_dir``."""
    return Path(socket_dir) / SOCKET_NAME


def endpoint(path: str | Path) -> str:
    """The ZeroMQ endpoint of a socket file; raises ValueError when the path is too long."""
    text = os.fspath(path)
    if len(text.encode()) > MAX_SOCKET_PATH_BYTES:
        raise ValueError(
            f"engine socket path is {len(text.encode())} bytes, the limit is "
            f"{MAX_SOCKET_PATH_BYTES}: {text}"
        )
    return f"ipc://{text}"


def new_identity(tag: int) -> bytes:
    """A DEALER identity unique across processes and reconnections."""
    return f"w{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}".encode()


class RouterTransport:
    """The engine's ROUTER socket: receives worker messages, sends each worker its replies.

    Sends never block: the high-water marks are unlimited (memory is bounded by the requests
    in flight) and ``ROUTER_MANDATORY`` turns a send to a worker that has gone away into a
    ``False`` return, so the engine loop can abort that worker's requests.
    """

    def __init__(self, path: str | Path, context: zmq.Context[zmq.Socket[bytes]] | None = None):
        self.path = Path(path)
        self._owns_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._socket.setsockopt(zmq.SNDHWM, 0)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.bind(endpoint(self.path))
        self._closed = False

    def poll(self, timeout_ms: int) -> list[tuple[bytes, WorkerMessage]]:
        """Wait up to ``timeout_ms`` for a message (0: don't wait), then drain the queue."""
        received: list[tuple[bytes, WorkerMessage]] = []
        if not self._socket.poll(timeout_ms, zmq.POLLIN):
            return received
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return received
            if len(frames) != 2:
                logger.warning("dropping a malformed engine message (%d frames)", len(frames))
                continue
            worker, payload = frames
            try:
                received.append((worker, decode_worker_message(payload)))
            except msgspec.DecodeError as exc:
                logger.warning("dropping an undecodable message from %r: %s", worker, exc)

    def send(self, worker: bytes, message: EngineMessage) -> bool:
        """Send ``message`` to ``worker``; False when that worker is no longer connected."""
        try:
            self._socket.send_multipart((worker, encode(message)), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno in (errno.EHOSTUNREACH, zmq.EAGAIN):
                return False
            raise
        return True

    def close(self) -> None:
        """Close the socket (flushing pending sends briefly) and remove the socket file."""
        if self._closed:
            return
        self._closed = True
        self._socket.close(linger=_CLOSE_LINGER_MS)
        if self._owns_context:
            self._context.term()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def connect_dealer(
    context: zmq.asyncio.Context, path: str | Path, identity: bytes
) -> zmq.asyncio.Socket:
    """A worker's DEALER connected to the engine at ``path`` (the engine may bind later)."""
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.IDENTITY, identity)
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.setsockopt(zmq.RCVHWM, 0)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint(path))
    return socket
