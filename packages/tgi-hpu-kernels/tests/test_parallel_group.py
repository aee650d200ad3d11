"""The group across nodes, on 127.0.0.1: forming it (or one line naming who is missing),
heartbeats that report a lost peer, and a rank 0 failing after its plan went out.

Ranks here are threads of this process meeting at a real TCP store (the rendezvous and the
heartbeats need no process group), or, for the step failures, the real sharded runner:
rank 0 in this process, rank 1 a child process over gloo.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import replace

import psutil
import pytest
import torch

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
)
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.parallel import GroupJoinError
from tgi_hpu_kernels.parallel.liveness import SILENT_S, PeerWatch
from tgi_hpu_kernels.parallel.rendezvous import left_key, rendezvous


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(rank: int, num_shard: int = 2, nnodes: int = 2, timeout_s: float = 1.0):
    return RunnerSettings(
        num_shard=num_shard,
        nnodes=nnodes,
        rank=rank,
        master_addr="127.0.0.1",
        master_port=free_port(),
        rendezvous_timeout=timeout_s,
    )


def test_rank_0_names_the_ranks_and_nodes_that_never_joined() -> None:
    settings = _settings(0, num_shard=4)
    started = time.monotonic()
    with pytest.raises(GroupJoinError) as raised:
        rendezvous(settings)
    assert time.monotonic() - started < 5
    assert str(raised.value) == (
        f"rank(s) 1, 2, 3 of node(s) 0, 1 did not join rank 0 at 127.0.0.1:"
        f"{settings.master_port} within 1 s (--rendezvous-timeout)"
    )


def test_a_node_that_cannot_reach_rank_0_says_so_in_one_line() -> None:
    settings = _settings(1)
    with pytest.raises(GroupJoinError) as raised:
        rendezvous(settings)
    message = str(raised.value)
    assert message == (
        f"rank 1 (node 1) could not reach rank 0 at 127.0.0.1:{settings.master_port} within "
        "1 s (--rendezvous-timeout): is node 0's launcher running there?"
    )


def test_every_rank_hears_when_the_group_does_not_form() -> None:
    """3 ranks on 3 nodes, rank 2 never comes: rank 0 names it, rank 1 (which joined) is
    told the group did not form."""
    rank0 = _settings(0, num_shard=3, nnodes=3, timeout_s=2.0)
    errors: dict[int, str] = {}

    def join(settings: RunnerSettings) -> None:
        try:
            rendezvous(settings)
        except GroupJoinError as error:
            errors[settings.rank] = str(error)

    threads = [threading.Thread(target=join, args=(replace(rank0, rank=r),)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors[0].startswith("rank(s) 2 of node(s) 2 did not join rank 0 at 127.0.0.1:")
    assert errors[1] == (
        f"rank 1 (node 1) reached rank 0 at 127.0.0.1:{rank0.master_port}, but the group did "
        "not form within 2 s (--rendezvous-timeout): another node is missing, or rank 0 gave up"
    )


def test_a_peer_that_stops_beating_is_reported_one_that_left_is_not() -> None:
    """Ranks 1 and 2 beat; rank 1 then leaves in order, rank 2 stops without a word (its
    node vanished): rank 0 reports rank 2 alone, within SILENT_S and a beat or two."""
    rank0 = _settings(0, num_shard=3, nnodes=3, timeout_s=5.0)
    stores = {}
    threads = [
        threading.Thread(target=lambda r=r: stores.update({r: rendezvous(replace(rank0, rank=r))}))
        for r in (0, 1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    reports: list[tuple[Sequence[int], str, float]] = []
    lost = threading.Event()

    def on_lost(ranks: Sequence[int], why: str) -> None:
        reports.append((list(ranks), why, time.monotonic()))
        lost.set()

    watch0 = PeerWatch(rank0)
    watch0.watch([1, 2], on_lost)
    peers = [PeerWatch(replace(rank0, rank=r)) for r in (1, 2)]  # beating, watching nobody
    time.sleep(1.0)
    stores[1].set(left_key(1), "1")
    for peer in peers:
        peer.stop()
    stopped = time.monotonic()
    assert lost.wait(SILENT_S + 3)
    watch0.stop()
    [(ranks, why, at)] = reports
    assert (ranks, why) == ([2], f"no heartbeat for {SILENT_S:g} s")
    assert at - stopped < SILENT_S + 1.5


def test_a_lost_rank_0_is_reported_by_the_others() -> None:
    """Rank 0 hosts the store: when it is gone, a watching rank reports it at once."""
    rank0 = _settings(0, num_shard=2, nnodes=2, timeout_s=5.0)
    stores = {}
    threads = [
        threading.Thread(target=lambda r=r: stores.update({r: rendezvous(replace(rank0, rank=r))}))
        for r in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    reports: list[tuple[list[int], str]] = []
    lost = threading.Event()
    watch = PeerWatch(replace(rank0, rank=1))
    watch.watch([0], lambda r, w: (reports.append((list(r), w)), lost.set()))
    time.sleep(0.8)
    del stores[0]  # rank 0's store server goes with it
    assert lost.wait(SILENT_S + 3)
    watch.stop()
    [(ranks, why)] = reports
    assert ranks == [0]
    assert why.startswith(f"rank 0's store at 127.0.0.1:{rank0.master_port} is unreachable"), why


# --- a step that fails on rank 0 ------------------------------------------------------------

PROMPT = (3, 17, 29, 41, 5, 9)


def _prefill(request_id: int) -> StepPlan:
    item = PrefillItem(
        request_id=request_id,
        token_ids=PROMPT,
        num_prompt_tokens=len(PROMPT),
        num_cached_tokens=0,
        block_table=(0, 1, 2, 3),
        sampling=SamplingParams(),
    )
    return StepPlan(
        step_id=request_id, shape=PrefillShape(1, 8), prefill=(item,), released=(request_id - 1,)
    )


def _decode(
    request_id: int, token: int, shape: DecodeShape | PrefillShape | None = None
) -> StepPlan:
    item = DecodeItem(
        request_id=request_id, token_id=token, position=len(PROMPT), block_table=(0, 1, 2, 3)
    )
    return StepPlan(step_id=100 + request_id, shape=shape or DecodeShape(1, 4), decode=(item,))


def _two_tokens(runner, request_id: int) -> list[int]:
    first = runner.execute(_prefill(request_id)).outputs[0].token_id
    return [first, runner.execute(_decode(request_id, first)).outputs[0].token_id]


def test_a_plan_rank_0_cannot_build_fails_alone_and_the_shards_stay_in_step(
    tiny_checkpoint, sharded_runner
):
    folder, _ = tiny_checkpoint("llama")
    with sharded_runner(folder, block_size=4) as (runner, _):
        expected = _two_tokens(runner, 1)
        unbuildable = _decode(1, expected[1], PrefillShape(1, 8))
        with pytest.raises(ValueError, match=r"^a decode plan needs a DecodeShape"):
            runner.execute(unbuildable)
        assert _two_tokens(runner, 3) == expected  # a shard that ran a stray plan would differ


def test_a_step_failing_on_rank_0_after_its_plan_went_out_ends_the_shards(
    tiny_checkpoint, sharded_runner, monkeypatch
):
    folder, _ = tiny_checkpoint("llama")
    with sharded_runner(folder, block_size=4) as (runner, [shard_pid]):
        _two_tokens(runner, 1)
        model = runner._model

        def fail(*args: object, **kwargs: object) -> torch.Tensor:
            raise RuntimeError("injected failure")

        monkeypatch.setattr(model.model.layers[0], "forward", fail)
        with pytest.raises(RuntimeError, match="injected failure"):
            runner.execute(_prefill(2))
        assert "injected failure" in (runner._group.out_of_step or "")
        # rank 1 waited in layer 0's all-reduce: the destroyed group fails it at once
        assert psutil.Process(shard_pid).wait(10) != 0
        monkeypatch.undo()
        with pytest.raises(RuntimeError, match=r"^the shards are out of step since step 2 "):
            runner.execute(_prefill(3))
