"""Tensor parallelism (TGI's ``--num-shard``): Megatron-style sharding of the Llama family.

- ``sharding.py``: what each rank holds (heads, MLP columns, weight slices, all-reduces).
- ``group.py``: the torch.distributed group and the step plans rank 0 sends through it.
- ``shards.py``: rank 0 starting, watching and stopping ranks 1..N-1 (``worker.py``).

``TorchModelRunner`` uses these when ``RunnerSettings.num_shard > 1``.
"""

from __future__ import annotations

from tgi_hpu_kernels.parallel.group import TensorParallelGroup
from tgi_hpu_kernels.parallel.sharding import (
    add_row_parallel_reduce,
    check_shardable,
    shard_config,
    shard_weights,
)
from tgi_hpu_kernels.parallel.shards import (
    ShardProcesses,
    TensorParallel,
    exit_on_shard_death,
    start_tensor_parallel,
)

__all__ = [
    "ShardProcesses",
    "TensorParallel",
    "TensorParallelGroup",
    "add_row_parallel_reduce",
    "check_shardable",
    "exit_on_shard_death",
    "shard_config",
    "shard_weights",
    "start_tensor_parallel",
]
