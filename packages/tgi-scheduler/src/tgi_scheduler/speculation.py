"""Draft tokens for speculative decoding (``--speculate N``): n-gram prompt lookup.

A sequence's draft is what followed the latest earlier occurrence of its last 3 tokens
(else 2, else 1), up to ``N`` tokens: text that repeats itself (code being edited, JSON
echoing its input, quoted passages) is guessed for free. The runner verifies every draft
token in the same forward pass as the sequence's last token and keeps those its own choice
agrees with, so outputs are those of plain decoding; a wrong guess costs only the rows.

``NgramDrafter`` indexes each n-gram once, as tokens are appended, so a proposal costs
O(new tokens) rather than a scan of the whole history.

Draft tokens count against a step's row budget, ``MAX_VERIFY_ROWS`` rows in all: a step of
few rows is bound by reading the weights, so verifying a few more rows is nearly free, while
a full batch is bound by its rows, and drafts would only multiply them (measured on SmolLM2
at 32 streams: half the throughput with drafts on every sequence). A batch that fills the
budget by itself speculates nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MAX_VERIFY_ROWS", "NgramDrafter"]

MAX_NGRAM = 3
MAX_VERIFY_ROWS = 16  # rows (last tokens + drafts) of a decode step that carries drafts


class NgramDrafter:
    """The n-gram index of one sequence's tokens (append-only, as a sequence's are)."""

    __slots__ = ("_index", "_indexed")

    def __init__(self) -> None:
        self._index: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest follower is
        self._indexed = 0  # n-grams ending before this position are indexed

    def propose(self, tokens: Sequence[int], num_tokens: int) -> tuple[int, ...]:
        """Up to ``num_tokens`` tokens guessed to follow ``tokens``; () without a match."""
        last = len(tokens) - 1
        index = self._index
        for end in range(self._indexed, last):  # n-grams that have a follower
            for size in range(1, min(MAX_NGRAM, end + 1) + 1):
                index[tuple(tokens[end - size + 1 : end + 1])] = end + 1
        self._indexed = max(self._indexed, last)
        if num_tokens <= 0:
            return ()
        for size in range(min(MAX_NGRAM, len(tokens)), 0, -1):
            start = index.get(tuple(tokens[len(tokens) - size :]))
            if start is not None:
                return tuple(tokens[start : start + num_tokens])
        return ()
