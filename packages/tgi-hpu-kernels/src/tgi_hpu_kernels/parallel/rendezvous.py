"""Forming the group: every rank meets rank 0's TCP store, or every node hears why not.

Rank 0 hosts a ``torch.distributed.TCPStore`` at ``master_addr:master_port``; every rank
(on any node) connects to it and writes ``tgi/joined/<rank>``. Rank 0 waits until all have,
then writes ``tgi/formed``, which the others wait for. ``--rendezvous-timeout`` bounds each
wait, and each failure is one line naming who is missing:

- rank 0: the ranks (and their nodes) that never joined;
- any other rank: rank 0 unreachable, or the group not formed (rank 0 gave up).

The same store then carries torch.distributed's own rendezvous (under a prefix), the
heartbeats (``liveness.py``) and the ``tgi/left/<rank>`` marks of an orderly stop.
"""

from __future__ import annotations

import time
from datetime import timedelta

# torch.distributed re-exports these without listing them: mypy wants the defining module
from torch._C._distributed_c10d import TCPStore

from tgi_core.settings.slices import RunnerSettings

__all__ = ["GroupJoinError", "connect_store", "rendezvous"]

_POLL_S = 0.1
FORMED_KEY = "tgi/formed"


class GroupJoinError(RuntimeError):
    """The tensor-parallel group did not form (one line: who is missing, where)."""


def joined_key(rank: int) -> str:
    return f"tgi/joined/{rank}"


def left_key(rank: int) -> str:
    return f"tgi/left/{rank}"


def connect_store(settings: RunnerSettings, *, timeout_s: float, master: bool) -> TCPStore:
    """A connection to the group's store (``master``: rank 0 creates and hosts it)."""
    return TCPStore(
        settings.master_addr,
        settings.master_port,
        world_size=settings.num_shard,
        is_master=master,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def rendezvous(settings: RunnerSettings) -> TCPStore:
    """Meets the other ranks at rank 0's store; returns it once the group has formed.

    Raises:
        GroupJoinError: a rank missing past ``settings.rendezvous_timeout``, rank 0
            unreachable, or the port taken.
    """
    rank, timeout_s = settings.rank, settings.rendezvous_timeout
    where = f"{settings.master_addr}:{settings.master_port}"
    try:
        store = connect_store(settings, timeout_s=timeout_s, master=rank == 0)
    except (RuntimeError, OSError) as error:
        if rank == 0:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise GroupJoinError(f"rank 0 cannot listen on {where}: {first}") from error
        raise GroupJoinError(
            f"rank {rank} (node {settings.node_rank}) could not reach rank 0 at {where} within "
            f"{timeout_s:g} s (--rendezvous-timeout): is node 0's launcher running there?"
        ) from error
    store.set(joined_key(rank), "1")
    if rank == 0:
        _wait_for_every_rank(store, settings, where)
        store.set(FORMED_KEY, "1")
        return store
    try:
        store.wait([FORMED_KEY], timedelta(seconds=timeout_s))
    except (RuntimeError, OSError) as error:
        raise GroupJoinError(
            f"rank {rank} (node {settings.node_rank}) reached rank 0 at {where}, but the group "
            f"did not form within {timeout_s:g} s (--rendezvous-timeout): another node is "
            "missing, or rank 0 gave up"
        ) from error
    return store


def _wait_for_every_rank(store: TCPStore, settings: RunnerSettings, where: str) -> None:
    deadline = time.monotonic() + settings.rendezvous_timeout
    missing = list(range(1, settings.num_shard))
    while missing:
        missing = [rank for rank in missing if not store.check([joined_key(rank)])]
        if not missing:
            return
        if time.monotonic() > deadline:
            nodes = sorted({rank // settings.ranks_per_node for rank in missing})
            raise GroupJoinError(
                f"rank(s) {', '.join(map(str, missing))} of node(s) "
                f"{', '.join(map(str, nodes))} did not join rank 0 at {where} within "
                f"{settings.rendezvous_timeout:g} s (--rendezvous-timeout)"
            )
        time.sleep(_POLL_S)
