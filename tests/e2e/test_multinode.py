"""Two "nodes" on one machine: two launchers with separate process trees, one tiny Llama in
2 shards over gloo on 127.0.0.1 (``--nnodes 2``, ``--node-rank 0|1``).

- Node 1 runs its shard only; node 0 runs rank 0 and serves HTTP. Greedy tokens equal
  transformers' on the same weights, i.e. one process's; SIGTERM on node 0 stops both
  nodes, each with exit status 0.
- Node 1 lost (its whole process tree killed, as when a host vanishes): node 0's /health
  answers 503 and its launcher exits non-zero, within 10 s.
- Node 0 lost: node 1's launcher exits non-zero within 10 s.
- A node whose peer never comes: each launcher fails with one line naming what is missing,
  within ``--rendezvous-timeout`` and start-up.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

from tgi_hpu_kernels.testing import greedy_reference, save_tiny_checkpoint, save_word_tokenizer
from tgi_server.testing import (
    LaunchedService,
    free_port,
    is_running,
    launch_service,
    process_tree,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPT = (5, 17, 33, 9, 40, 41)
NUM_NEW_TOKENS = 8
LIMITS = (
    "--dtype", "float32",
    "--max-input-tokens", "32", "--max-total-tokens", "64",
    "--max-batch-prefill-tokens", "64", "--max-batch-size", "2",
)  # fmt: skip
ENVIRON = {"PAD_SEQUENCE_TO_MULTIPLE_OF": "32", "BATCH_BUCKET_SIZE": "2", "LOG_LEVEL": "info"}
LOSS_DEADLINE_S = 10.0


class Model(NamedTuple):
    folder: Path
    reference: torch.nn.Module


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    folder = tmp_path_factory.mktemp("tiny-llama-nodes")
    reference = save_tiny_checkpoint(folder, "llama")  # 4 heads, 2 KV heads
    save_word_tokenizer(folder)
    return Model(folder, reference)


def _cluster_flags(model: Model, master_port: int, node_rank: int, *extra: str) -> list[str]:
    return [
        *LIMITS,
        "--model-id", str(model.folder), "--device", "cpu",
        "--num-shard", "2", "--nnodes", "2", "--node-rank", str(node_rank),
        "--master-addr", "127.0.0.1", "--master-port", str(master_port),
        *extra,
    ]  # fmt: skip


def _start_node(flags: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A shard-only node: its own session, so that killing its group kills the node."""
    launcher = Path(sys.executable).with_name("text-generation-launcher")
    environ = {**os.environ, **ENVIRON}  # noqa: TID251 (a child's environment, not a setting)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [str(launcher), *flags],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environ,
            start_new_session=True,
        )


def _kill_tree(pid: int) -> None:
    for child in (*process_tree(pid), pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


class Cluster(NamedTuple):
    node0: LaunchedService
    node1: subprocess.Popen[bytes]
    node1_log: Path


@pytest.fixture
def cluster(model: Model, tmp_path: Path) -> Iterator[Cluster]:
    master_port = free_port()
    node1_log = tmp_path / "node1.log"
    node1 = _start_node(_cluster_flags(model, master_port, 1), node1_log)
    try:
        node0 = launch_service(
            _cluster_flags(model, master_port, 0),
            log_path=tmp_path / "node0.log",
            environ=ENVIRON,
            ready_timeout_s=120,
        )
    except BaseException:
        _kill_tree(node1.pid)
        raise
    trees = process_tree(node0.pid) | process_tree(node1.pid)
    try:
        yield Cluster(node0, node1, node1_log)
    finally:
        for pid in (node0.pid, node1.pid):
            _kill_tree(pid)
        node0.process.wait(30)
        node1.wait(30)
    assert [pid for pid in trees if is_running(pid)] == []


def _request(port: int, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        body = None if payload is None else json.dumps(payload)
        connection.request(method, path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        connection.close()


def _greedy_ids(port: int) -> list[int]:
    parameters = {"max_new_tokens": NUM_NEW_TOKENS, "details": True}
    text = " ".join(f"t{i}" for i in PROMPT)
    status, body = _request(port, "POST", "/generate", {"inputs": text, "parameters": parameters})
    assert status == 200, body
    return [token["id"] for token in body["details"]["tokens"]]


def _wait(process: subprocess.Popen[bytes], deadline: float) -> int | None:
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return process.poll()


def test_two_nodes_answer_as_one_and_stop_together(model: Model, cluster: Cluster) -> None:
    reference = greedy_reference(model.reference, PROMPT, NUM_NEW_TOKENS)
    assert _greedy_ids(cluster.node0.port) == reference
    assert "Node 1 of 2: starting shard ranks 1-1" in cluster.node1_log.read_text()
    # SIGTERM on node 0 drains, then rank 0 tells every rank to stop: both nodes exit 0
    assert cluster.node0.stop(timeout_s=60) == 0, cluster.node0.log()[-3000:]
    assert _wait(cluster.node1, time.monotonic() + 10) == 0, cluster.node1_log.read_text()
    assert "did not leave in time" not in cluster.node0.log()


def test_a_lost_node_takes_the_service_to_503_and_exit_1(cluster: Cluster) -> None:
    _kill_tree(cluster.node1.pid)  # the host vanishes: no stop message, no exit status seen
    lost_at = time.monotonic()
    deadline = lost_at + LOSS_DEADLINE_S
    health = []
    while cluster.node0.process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # the listener closes on the way out
            health.append(_request(cluster.node0.port, "GET", "/health")[0])
        time.sleep(0.1)
    assert _wait(cluster.node0.process, deadline) == 1, cluster.node0.log()[-3000:]
    assert 503 in health  # load balancers saw it fail before the listener closed
    assert "on another node lost (no heartbeat for" in cluster.node0.log()


def test_a_lost_rank_0_ends_the_other_node(cluster: Cluster) -> None:
    _kill_tree(cluster.node0.pid)
    deadline = time.monotonic() + LOSS_DEADLINE_S
    assert _wait(cluster.node1, deadline) == 1, cluster.node1_log.read_text()[-3000:]
    log = cluster.node1_log.read_text()
    assert "Shard 1 exited with status 1: stopping this node" in log
    # the heartbeat, or the plan broadcast failing first: either way one line, no traceback
    assert "rank 0 lost (rank 0's store at 127.0.0.1:" in log or "rank 1 stops: " in log
    assert "Traceback" not in log


@pytest.mark.parametrize("node_rank", [0, 1])
def test_a_node_alone_fails_in_one_line_naming_what_is_missing(
    model: Model, tmp_path: Path, node_rank: int
) -> None:
    port = free_port()
    flags = _cluster_flags(model, port, node_rank, "--rendezvous-timeout", "2")
    flags += ["--hostname", "127.0.0.1", "--port", str(free_port())]
    flags += ["--prometheus-port", str(free_port())]
    node = _start_node(flags, tmp_path / "node.log")
    try:
        assert _wait(node, time.monotonic() + 60) == 1
    finally:
        _kill_tree(node.pid)
    log = (tmp_path / "node.log").read_text()
    expected = (
        f"rank(s) 1 of node(s) 1 did not join rank 0 at 127.0.0.1:{port} within 2 s "
        "(--rendezvous-timeout)"
        if node_rank == 0
        else f"rank 1 (node 1) could not reach rank 0 at 127.0.0.1:{port} within 2 s "
        "(--rendezvous-timeout): is node 0's launcher running there?"
    )
    assert expected in log, log[-3000:]
    assert "Traceback" not in log
