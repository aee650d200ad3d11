"""Heartbeats through the group's store, so that a lost node is noticed while nobody steps.

A collective only fails when a peer is needed; an idle group would not notice a node that
vanished (and a peer on another host gives no PID to watch). So each watching rank runs
one thread with its own store connection (short timeout): every ``BEAT_S`` it increments
``tgi/beat/<rank>`` and reads its peers' counters. A peer whose counter stood still for
``SILENT_S`` (it stopped, hung, or its host vanished), or a store that cannot be reached
(rank 0, which hosts it, is gone), is reported once to ``on_lost(ranks, why)``. Every rank
beats from the moment it joined, watching or not. What a loss
means (exit, restart) is the caller's policy: this module only reports it. A peer that
marked ``tgi/left/<rank>`` (an orderly stop) is not lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.parallel.rendezvous import connect_store, left_key

__all__ = ["BEAT_S", "SILENT_S", "OnLost", "PeerWatch"]

logger = logging.getLogger(__name__)

BEAT_S = 0.5
SILENT_S = 4.0  # 8 missed beats: a loaded host still beats; a lost node exits within 10 s
_STORE_TIMEOUT_S = 2.0

OnLost = Callable[[Sequence[int], str], None]


def _beat_key(rank: int) -> str:
    return f"tgi/beat/{rank}"


class PeerWatch:
    """This rank's heartbeat (from construction: others may watch it), and a watch on the
    peers ``watch`` names. A daemon thread; ``stop`` ends both."""

    def __init__(self, settings: RunnerSettings) -> None:
        self._settings = settings
        self._peers: tuple[int, ...] = ()
        self._on_lost: OnLost | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"peer-watch-{settings.rank}", daemon=True
        )
        self._thread.start()

    def watch(self, peers: Sequence[int], on_lost: OnLost) -> None:
        """Reports ``peers`` that stop beating (or the store gone) to ``on_lost``, once."""
        self._on_lost = on_lost
        self._peers = tuple(peers)  # last: the thread reads the peers, then the callback

    def stop(self) -> None:
        """No more beats or reports (an orderly stop begins). Idempotent."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=_STORE_TIMEOUT_S + BEAT_S)

    def _run(self) -> None:
        settings = self._settings
        last_seen: dict[int, float] = {}
        counts: dict[int, int] = {}
        try:
            store = connect_store(settings, timeout_s=_STORE_TIMEOUT_S, master=False)
            while not self._stop.wait(BEAT_S):
                store.add(_beat_key(settings.rank), 1)
                now = time.monotonic()
                for peer in self._peers:
                    count = store.add(_beat_key(peer), 0)
                    if count != counts.get(peer):
                        counts[peer], last_seen[peer] = count, now
                silent = [
                    peer
                    for peer in self._peers
                    if now - last_seen[peer] > SILENT_S and not store.check([left_key(peer)])
                ]
                if silent and not self._stop.is_set():
                    self._report(silent, f"no heartbeat for {SILENT_S:g} s")
                    return
        except (RuntimeError, OSError) as error:  # the store (rank 0's) is gone or hung
            if self._peers and not self._stop.is_set():
                where = f"{settings.master_addr}:{settings.master_port}"
                first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
                self._report(
                    self._peers, f"rank 0's store at {where} is unreachable ({first_line})"
                )

    def _report(self, ranks: Sequence[int], why: str) -> None:
        logger.error("rank(s) %s lost: %s", ", ".join(map(str, ranks)), why)
        if self._on_lost is not None:
            self._on_lost(ranks, why)
