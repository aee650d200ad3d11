"""Vocab-parallel token embeddings and LM head (TGI's TensorParallelEmbedding and
TensorParallelHead).

Each of ``N`` ranks holds one contiguous block of ``ceil(vocab / N)`` rows of the embedding
matrix and of the LM head, the same block of both (a tied head shares the embedding's
tensor), the last rank's padded with zero rows when ``N`` does not divide the vocabulary.
``vocab_rows`` cuts a checkpoint tensor to the rank's block; ``add_vocab_parallel`` hooks the
rank's model (built with ``vocab_size`` = the block, ``shard_config``'s):

- the embedding looks up the ids inside its block (the others read local row 0, then are
  zeroed), and the ranks' rows are summed: each id is found on exactly one rank;
- the head computes its block's logits and rank 0 gathers every rank's, cut to the true
  vocabulary, so padding columns never reach sampling. Ranks > 0 never sample: they get
  their own block back, after joining the gather in rank 0's order.

Hooks rather than wrapper modules, so parameter names (the checkpoint mapping, a quantized
head, the tied weight) stay as they are. Medusa heads (rank 0's alone) are not split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from tgi_hpu_kernels.parallel.group import TensorParallelGroup

__all__ = ["VOCAB_PARALLEL", "add_vocab_parallel", "vocab_block", "vocab_rows"]

# the checkpoint tensors split by vocabulary rows, by their names in Llama's tree (which every
# native family's ``checkpoint_tensors`` renames to)
VOCAB_PARALLEL = ("model.embed_tokens.weight", "lm_head.weight")


def vocab_block(vocab_size: int, num_shard: int) -> int:
    """The rows of the embedding (and head) each rank holds: ``ceil(vocab_size / num_shard)``."""
    return -(-vocab_size // num_shard)


def vocab_rows(tensor: Tensor, rank: int, num_shard: int) -> Tensor:
    """Rank ``rank``'s block of ``tensor``'s rows (``[vocab, ...]``), padded with zero rows to
    ``vocab_block`` on the last rank."""
    block = vocab_block(tensor.shape[0], num_shard)
    rows = tensor[rank * block : (rank + 1) * block]
    if rows.shape[0] == block:
        return rows.contiguous()
    padded = tensor.new_zeros((block, *tensor.shape[1:]))
    padded[: rows.shape[0]] = rows
    return padded


class _EmbeddingBlock:
    """The embedding's pre-hook (ids -> local rows) and hook (zero the ids outside the block,
    sum over the ranks); the pre-hook's mask is the hook's, within one call."""

    def __init__(self, start: int, block: int, group: TensorParallelGroup) -> None:
        self._start, self._block, self._group = start, block, group
        self._outside: Tensor | None = None

    def before(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        (input_ids,) = args
        local = input_ids - self._start
        self._outside = (local < 0) | (local >= self._block)
        return (local.masked_fill(self._outside, 0),)

    def after(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        assert self._outside is not None, "the pre-hook runs first"
        output = output.masked_fill(self._outside.unsqueeze(-1), 0)
        self._outside = None
        self._group.all_reduce(output)
        return output


class _GatherLogits:
    """The head's hook: rank 0 gets ``[n, vocab_size]``, every rank's block side by side."""

    def __init__(self, vocab_size: int, group: TensorParallelGroup) -> None:
        self._vocab_size, self._group = vocab_size, group

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        blocks = self._group.gather_to_first(output)  # [num_shard, n, block]
        if blocks is None:
            return output
        # [n, num_shard * block], the padding columns (the last rank's) cut off
        return blocks.movedim(0, -2).flatten(-2)[..., : self._vocab_size]


def add_vocab_parallel(model: nn.Module, group: TensorParallelGroup, vocab_size: int) -> None:
    """Hooks the rank's embedding (``model.model.embed_tokens``) and LM head (``lm_head``),
    whose rows are this rank's block of the ``vocab_size`` rows (``vocab_rows``)."""
    block = vocab_block(vocab_size, group.num_shard)
    embed: nn.Module = model.get_submodule("model.embed_tokens")
    embedding = _EmbeddingBlock(group.rank * block, block, group)
    embed.register_forward_pre_hook(embedding.before)
    embed.register_forward_hook(embedding.after)
    model.get_submodule("lm_head").register_forward_hook(_GatherLogits(vocab_size, group))
