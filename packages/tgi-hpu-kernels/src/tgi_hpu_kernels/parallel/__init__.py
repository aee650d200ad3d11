"""Tensor parallelism (TGI's ``--num-shard``): Megatron-style sharding of the Llama family.

- ``sharding.py``: what each rank holds (heads, MLP columns, weight slices, all-reduces).
- ``vocab.py``: the vocab-parallel embedding and LM head (each rank ``ceil(vocab / N)`` rows;
  embeddings summed over the ranks, logits gathered to rank 0, which alone samples).
- ``rendezvous.py``: forming the group at rank 0's TCP store, across nodes, bounded by
  ``--rendezvous-timeout`` (``GroupJoinError`` names who is missing).
- ``group.py``: the torch.distributed group (all-reduce, gather to rank 0, broadcast) and the
  step plans rank 0 sends through it; collective timeouts; a rank 0 that fails after
  sending a plan ``abandon``s the group.
- ``liveness.py``: heartbeats through the store, for ranks on other nodes (no PID to watch).
- ``shards.py``: a node's ranks as child processes, started and stopped by PID (no watcher:
  what a dead shard means is the caller's policy; the server's engine supervises its own).
- ``worker.py``: one rank > 0 serving rank 0's plans (``serve_rank``).

``TorchModelRunner(settings, group=...)`` is handed its group when ``num_shard > 1``; it
starts, watches and stops no process.
"""

from __future__ import annotations

from tgi_hpu_kernels.parallel.group import TensorParallelGroup, check_group
from tgi_hpu_kernels.parallel.rendezvous import GroupJoinError
from tgi_hpu_kernels.parallel.sharding import (
    add_row_parallel_reduce,
    check_shardable,
    shard_config,
    shard_weights,
)
from tgi_hpu_kernels.parallel.shards import (
    ShardProcesses,
    local_shards,
    node_ranks,
    remote_ranks,
    stop_shards,
)
from tgi_hpu_kernels.parallel.vocab import add_vocab_parallel
from tgi_hpu_kernels.parallel.worker import serve_rank

__all__ = [
    "GroupJoinError",
    "ShardProcesses",
    "TensorParallelGroup",
    "add_row_parallel_reduce",
    "add_vocab_parallel",
    "check_group",
    "check_shardable",
    "local_shards",
    "node_ranks",
    "remote_ranks",
    "serve_rank",
    "shard_config",
    "shard_weights",
    "stop_shards",
]
