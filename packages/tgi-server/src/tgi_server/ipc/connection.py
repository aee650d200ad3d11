"""A worker's connection to the engine: one DEALER socket, its reader, its disconnect watcher.

``DealerConnection`` belongs to one event loop in one process (``tgi_server.engine_client``
makes a new one after a fork or in another loop). It hands each decoded engine message to
``on_message``, and calls ``on_disconnect`` when the engine's side of the socket goes away:
the engine binds once and never comes back, so that means the engine process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from tgi_server.ipc.messages import EngineMessage, decode_engine_message
from tgi_server.ipc.sockets import connect_dealer

__all__ = ["DealerConnection"]

logger = logging.getLogger(__name__)


class DealerConnection:
    """One DEALER connection to the engine at ``path``, created in the running event loop.

    Args:
        path: the engine socket.
        identity: this connection's DEALER identity (``new_identity``).
        on_message: called on the loop with each engine message.
        on_disconnect: called on the loop when the engine's side goes away.
    """

    def __init__(
        self,
        path: str | Path,
        identity: bytes,
        on_message: Callable[[EngineMessage], None],
        on_disconnect: Callable[[], None],
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.pid = os.getpid()
        self.context = zmq.asyncio.Context()
        self.socket = connect_dealer(self.context, path, identity)
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.tasks = (
            self.loop.create_task(self._read(on_message), name="tgi-engine-reader"),
            self.loop.create_task(self._watch(on_disconnect), name="tgi-engine-watcher"),
        )

    def usable(self) -> bool:
        return self.pid == os.getpid() and self.loop is asyncio.get_running_loop()

    async def _read(self, on_message: Callable[[EngineMessage], None]) -> None:
        while True:
            data = await self.socket.recv()
            try:
                message = decode_engine_message(data)
            except msgspec.DecodeError as exc:
                logger.warning("dropping an undecodable engine message: %s", exc)
                continue
            on_message(message)

    async def _watch(self, on_disconnect: Callable[[], None]) -> None:
        while True:
            event = parse_monitor_message(await self.monitor.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                on_disconnect()

    def send_nowait(self, data: bytes) -> None:
        # Unlimited high-water mark: a non-blocking send completes at once.
        with contextlib.suppress(zmq.ZMQError, RuntimeError):
            self.socket.send(data, zmq.NOBLOCK)

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.close()

    def close(self) -> None:
        """Close without awaiting; after a fork, only forget: the sockets are the parent's."""
        if self.pid != os.getpid():
            return
        if not self.loop.is_closed():
            for task in self.tasks:
                task.cancel()
        with contextlib.suppress(zmq.ZMQError):
            self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)
        self.context.term()
