"""Megatron-style tensor parallelism: what each rank holds.

Each of ``N`` ranks holds ``1/N`` of the attention heads, KV heads and MLP columns:
q/k/v and gate/up are split by output rows (column-parallel), o_proj and down_proj by input
columns (row-parallel, followed by a sum over ranks). A row-parallel bias is kept by rank 0
only, so the sum adds it once. The token embedding and the LM head are vocab-parallel: each
rank holds ``ceil(vocab / N)`` of their rows (``vocab.py``); norms (and GPT-BigCode's learned
position table) are replicated. The rank's model is simply the family's model built from
``shard_config``: nothing in the model code knows about ranks besides the hooks
``add_row_parallel_reduce`` and ``vocab.add_vocab_parallel`` install. Which checkpoint
projections are which is the family's ``TensorParallelLayout`` (Llama's names by default).
The process group itself lives in ``group.py``.

Fewer KV heads than ranks (multi-query Falcon and GPT-BigCode, GQA with few KV heads) are
replicated, as TGI does: ``N`` must then be a multiple of them, and rank ``r`` holds the one
KV head its query heads read, head ``r // (N // num_kv_heads)`` (that head's k/v rows and
biases), so each rank's KV cache holds one head: sharding past the KV heads buys no KV room.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from tgi_hpu_kernels.models.config import ModelConfig
from tgi_hpu_kernels.parallel.vocab import VOCAB_PARALLEL, vocab_block, vocab_rows

__all__ = [
    "LLAMA_LAYOUT",
    "TensorParallelLayout",
    "add_row_parallel_reduce",
    "check_shardable",
    "shard_config",
    "shard_weights",
]


@dataclass(frozen=True)
class TensorParallelLayout:
    """Checkpoint projection names (``.name.``) split by output rows (``column``) and by
    input columns, then summed over ranks (``row``)."""

    column: tuple[str, ...]
    row: tuple[str, ...]
    # the column projections whose rows are KV heads (replicated past num_kv_heads ranks)
    kv: tuple[str, ...] = (".k_proj.", ".v_proj.")


LLAMA_LAYOUT = TensorParallelLayout(
    column=(".q_proj.", ".k_proj.", ".v_proj.", ".gate_proj.", ".up_proj."),
    row=(".o_proj.", ".down_proj."),
)


def check_shardable(config: ModelConfig, num_shard: int) -> None:
    """Raises ValueError (one line) when ``num_shard`` does not divide the attention heads
    or the MLP, or neither divides nor is a multiple of the KV heads."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if heads % num_shard:
        raise ValueError(
            f"--num-shard {num_shard} must divide the model's attention heads ({heads}): "
            f"pick a num_shard that divides {heads}"
        )
    if kv_heads % num_shard and num_shard % kv_heads:
        raise ValueError(
            f"--num-shard {num_shard} must divide the model's KV heads ({kv_heads}) or be a "
            f"multiple of them (each KV head is then replicated): pick such a num_shard "
            f"that also divides the attention heads ({heads})"
        )
    if config.intermediate_size % num_shard:
        raise ValueError(
            f"--num-shard {num_shard} must divide the model's intermediate_size "
            f"({config.intermediate_size})"
        )


def shard_config(config: ModelConfig, num_shard: int) -> ModelConfig:
    """The shape of one rank's model: ``1/num_shard`` of the heads and MLP width, at least
    one KV head (replicated when the model has fewer than ``num_shard``), and its block of
    the vocabulary's rows (``vocab_block``: its logits are gathered to the full vocabulary)."""
    check_shardable(config, num_shard)
    return replace(
        config,
        num_attention_heads=config.num_attention_heads // num_shard,
        num_key_value_heads=max(config.num_key_value_heads // num_shard, 1),
        intermediate_size=config.intermediate_size // num_shard,
        vocab_size=vocab_block(config.vocab_size, num_shard),
    )


def _slice(tensor: Tensor, dim: int, rank: int, num_shard: int) -> Tensor:
    size = tensor.shape[dim] // num_shard
    return tensor.narrow(dim, rank * size, size).contiguous()


def _shard_tensor(
    name: str,
    tensor: Tensor,
    rank: int,
    num_shard: int,
    layout: TensorParallelLayout,
    *,
    num_kv_heads: int,
) -> Tensor:
    if name in VOCAB_PARALLEL:
        return vocab_rows(tensor, rank, num_shard)
    if any(part in name for part in layout.column):
        if num_kv_heads < num_shard and any(part in name for part in layout.kv):
            # replicated: the head_dim rows (weight or bias) of the one KV head this
            # rank's query heads read; num_shard // num_kv_heads consecutive ranks share it
            head = rank // (num_shard // num_kv_heads)
            return _slice(tensor, 0, head, num_kv_heads)
        return _slice(tensor, 0, rank, num_shard)
    if any(part in name for part in layout.row):
        if name.endswith(".bias"):  # summed over ranks: only rank 0 adds it
            return tensor if rank == 0 else torch.zeros_like(tensor)
        return _slice(tensor, 1, rank, num_shard)
    return tensor  # norms, position tables: replicated


def shard_weights(
    weights: Iterable[tuple[str, Tensor]],
    *,
    rank: int,
    num_shard: int,
    num_kv_heads: int,
    layout: TensorParallelLayout = LLAMA_LAYOUT,
) -> Iterator[tuple[str, Tensor]]:
    """Checkpoint tensors (HF names, full shapes) -> this rank's slices, lazily.
    ``num_kv_heads`` is the whole model's: fewer than ``num_shard`` replicates them."""
    for name, tensor in weights:
        yield name, _shard_tensor(name, tensor, rank, num_shard, layout, num_kv_heads=num_kv_heads)


def add_row_parallel_reduce(
    model: nn.Module,
    all_reduce: Callable[[Tensor], None],
    layout: TensorParallelLayout = LLAMA_LAYOUT,
) -> int:
    """Sums every row-parallel projection's output over the ranks (a forward hook, so
    parameter names and the checkpoint mapping stay as they are). Returns how many hooks
    were added."""

    def reduce(module: nn.Module, args: Any, output: Tensor) -> Tensor:
        all_reduce(output)
        return output

    count = 0
    for name, module in model.named_modules():
        if any(f"{name}.".endswith(part) for part in layout.row):
            module.register_forward_hook(reduce)
            count += 1
    return count
