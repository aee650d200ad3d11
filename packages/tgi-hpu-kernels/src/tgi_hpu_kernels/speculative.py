"""Speculative decode steps: decode items that carry draft tokens (``--speculate``).

Each item's last token and its draft run as one prefill over the sequence's cached history
(the layout of a prefix-cached prefill, which the step builders already handle), so a step
computes the logits of every draft position at once. Tokens are then chosen position by
position with the ordinary sampler: a draft token is accepted when the token chosen before
it equals it, and the first disagreement (or the position after the last draft token) gives
the sequence one token of its own. Choosing exactly as plain decoding would, one sampler
draw per token in order, keeps greedy and seeded outputs identical to plain decoding; for an
n-gram draft (a single guessed token) "sample, accept if equal" is the speculative sampling
rule, so sampled outputs keep the model's distribution. Penalties, grammars and watermarks
see each chosen token before the next position is chosen; KV of rejected positions is
overwritten when those positions are computed again.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tgi_core.contract import (
    DecodeItem,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    SequenceOutput,
    TokenChoice,
    TopToken,
)
from tgi_hpu_kernels.sequence_sampling import PreparedStep, SequenceSampling

__all__ = ["choose_verified", "verify_items", "verify_shape"]


def verify_items(items: Sequence[DecodeItem]) -> list[PrefillItem]:
    """Each decode item as a prefill of its last token and draft over its cached history
    (only lengths and the tail are read: the cached tokens are placeholders)."""
    return [
        PrefillItem(
            request_id=item.request_id,
            token_ids=(0,) * item.position + (item.token_id, *item.draft),
            num_prompt_tokens=item.position + 1,
            num_cached_tokens=item.position,
            block_table=item.block_table,
            sampling=SamplingParams(),
        )
        for item in items
    ]


def verify_shape(items: Sequence[DecodeItem]) -> PrefillShape:
    """The (packed) shape of a verify step: every item, its longest run of new tokens."""
    longest = 1 + max(len(item.draft) for item in items)
    return PrefillShape(len(items), longest, max(len(item.block_table) for item in items))


def choose_verified(
    sequences: SequenceSampling,
    step: PreparedStep,
    items: Sequence[DecodeItem],
    logits: Tensor,
    offsets: Sequence[int],
) -> list[SequenceOutput]:
    """The tokens of a verify step: ``logits`` has one row per computed token (item ``i``'s
    rows from ``offsets[i]``), ``step`` the grammar masks of every item's first row."""
    chosen: list[list[TokenChoice]] = [[] for _ in items]
    active = list(range(len(items)))
    position = 0
    while active:
        if position:
            step = sequences.prepare_rows([items[i].request_id for i in active], step.failed)
        rows = torch.tensor([offsets[i] + position for i in active], device=logits.device)
        result = sequences.sample(step, logits.index_select(0, rows))
        going = []
        for k, i in enumerate(active):
            if items[i].request_id in step.failed:
                continue
            token = result.token_ids[k]
            top: tuple[TopToken, ...] = result.top_tokens[k]
            chosen[i].append(TokenChoice(token, result.logprobs[k], top))
            draft = items[i].draft
            if position < len(draft) and draft[position] == token:
                going.append(i)  # the guess was right: its own next position counts
        active = going
        position += 1
    failed = step.failed
    outputs = []
    for item, tokens in zip(items, chosen, strict=True):
        if item.request_id in failed:  # its request fails, as plain decoding's would at that token
            outputs.append(SequenceOutput(item.request_id, 0, 0.0, error=failed[item.request_id]))
            continue
        first, *extra = tokens
        outputs.append(
            SequenceOutput(
                item.request_id, first.token_id, first.logprob, first.top_tokens, extra=tuple(extra)
            )
        )
    return outputs
