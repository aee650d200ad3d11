"""The engine loop's heartbeat: a shared-memory record others read to tell a hung engine.

The engine loop beats once per iteration (between steps, and every idle poll): it writes
``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in every process of the machine) into a
small file next to its socket, mapped in memory, so a beat costs no system call. The record
also holds the step deadline (``ENGINE_STEP_TIMEOUT``): an engine whose last beat is older
than that is hung (an endless step, a stuck collective, a stopped process). The launcher
and the HTTP workers read the record; they never need the engine to run to notice it has
stopped, which is the point: a SIGSTOPped process cannot watch itself.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import time
from pathlib import Path

__all__ = ["HeartbeatReader", "HeartbeatWriter", "heartbeat_path"]

_RECORD = struct.Struct("<dd")  # last beat (monotonic seconds), step deadline (seconds)


def heartbeat_path(socket: str | Path) -> Path:
    """Where the engine serving at ``socket`` keeps its heartbeat."""
    return Path(f"{os.fspath(socket)}.heartbeat")


class HeartbeatWriter:
    """The engine's side: creates the record, beats, removes it on ``close``."""

    def __init__(self, path: str | Path, step_timeout_s: float) -> None:
        self.path = Path(path)
        self._step_timeout_s = step_timeout_s
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, _RECORD.size)
            self._map = mmap.mmap(fd, _RECORD.size)
        finally:
            os.close(fd)
        self.beat()

    def beat(self) -> None:
        # One 16-byte copy: struct.pack_into would first zero the record in place, and a
        # reader in that instant would see a beat at time 0, i.e. an engine hung for ever.
        self._map[: _RECORD.size] = _RECORD.pack(time.monotonic(), self._step_timeout_s)

    def close(self) -> None:
        self._map.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class HeartbeatReader:
    """The watchers' side: how long since the engine's last beat, and whether it is hung.

    The file is mapped on first use (the engine creates it once warmed up); until then, and
    when there is none (an engine on a thread), nothing is known.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._map: mmap.mmap | None = None

    def _record(self) -> tuple[float, float] | None:
        if self._map is None:
            try:
                with self.path.open("rb") as file:
                    self._map = mmap.mmap(file.fileno(), _RECORD.size, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # not there yet, or not yet sized
                return None
        last_beat, step_timeout_s = _RECORD.unpack_from(self._map, 0)
        return last_beat, step_timeout_s

    def overdue(self) -> float | None:
        """The age of the last beat when past the step deadline (a hung engine), else None.

        A verdict that kills a process is read twice: a beat written while it was read is
        not taken for a hang."""
        for _ in range(2):
            record = self._record()
            if record is None:
                return None
            age = time.monotonic() - record[0]
            if age <= record[1]:
                return None
        return age

    def fresh(self) -> bool:
        """Whether there is a heartbeat and its last beat is within the step deadline."""
        return self._record() is not None and self.overdue() is None

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
