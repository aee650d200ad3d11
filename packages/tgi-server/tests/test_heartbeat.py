"""The engine's heartbeat as its watchdog reads it: a live engine is never taken for a hung
one, however often it beats while being read, and a silent one is overdue past its deadline."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tgi_server.ipc.heartbeat import HeartbeatReader, HeartbeatWriter

READ_SECONDS = 1.5
# The engine's side in its own process: beat as fast as possible until the stop file appears
# (or 60 s pass, so that it never outlives a broken test).
BEATER = """
import sys, time
from pathlib import Path
from tgi_server.ipc.heartbeat import HeartbeatWriter
writer = HeartbeatWriter(sys.argv[1], 120.0)
stop, end = Path(sys.argv[2]), time.monotonic() + 60
while not stop.exists() and time.monotonic() < end:
    for _ in range(1000):
        writer.beat()
writer.close()
"""


def test_a_beating_engine_is_never_overdue(tmp_path: Path) -> None:
    # Another process beats as fast as it can, as the engine loop does between short steps;
    # every read in between must see a recent beat (a record caught mid-write once read as
    # a beat at time 0, and the launcher killed a healthy engine).
    path, stop = tmp_path / "engine.sock.heartbeat", tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", BEATER, str(path), str(stop)])
    try:
        reader = HeartbeatReader(path)
        deadline = time.monotonic() + 30
        while not reader.fresh():  # the writer process is starting
            assert time.monotonic() < deadline
            time.sleep(0.01)
        reads, overdue = 0, 0
        end = time.monotonic() + READ_SECONDS
        while time.monotonic() < end:
            reads += 1
            overdue += reader.overdue() is not None
        reader.close()
    finally:
        stop.touch()
        exit_status = writer.wait(timeout=30)
    assert exit_status == 0
    assert reads > 10_000 and overdue == 0, f"{overdue} of {reads} reads saw a hang"


def test_a_silent_engine_is_overdue_past_its_deadline(tmp_path: Path) -> None:
    writer = HeartbeatWriter(tmp_path / "engine.sock.heartbeat", 0.2)
    reader = HeartbeatReader(tmp_path / "engine.sock.heartbeat")
    assert reader.fresh() and reader.overdue() is None
    time.sleep(0.3)
    age = reader.overdue()
    assert age is not None and 0.2 < age < 5
    writer.beat()
    assert reader.overdue() is None
    reader.close()
    writer.close()
    assert not (tmp_path / "engine.sock.heartbeat").exists()
