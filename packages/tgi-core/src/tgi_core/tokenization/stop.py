"""Stop sequences: TGI's ``StopSequenceCriteria`` on the streamed text of one request.

TGI appends each generated token's text (decoded with special tokens kept) to a buffer,
trims the buffer to its last 200 characters once it passes 300, and stops when the buffer
*ends* with a stop sequence (``re.search(re.escape(stop) + "$")``, so, like TGI, a stop
sequence followed by one final newline also matches). The same test is done here with
``endswith``: no pattern to compile, and each token costs at most the stops' lengths (which
validation bounds by ``MAX_STOP_TAIL_CHARS``, longer ones could never match the tail), so a
request's matching is linear in its generated text. Counting tokens and EOS are the
scheduler's business, not this module's.
"""

from __future__ import annotations

from collections.abc import Sequence

from tgi_core.contract import StopChecker
from tgi_core.tokenization.detokenizer import IncrementalDetokenizer
from tgi_core.tokenization.protocol import TokenizerLike

__all__ = ["MAX_STOP_TAIL_CHARS", "StopSequenceChecker", "make_stop_checker"]

MAX_STOP_TAIL_CHARS = 300
_KEPT_TAIL_CHARS = 200  # TGI slices to the last 200 so it does not slice at every token


def _never_stops(token_id: int) -> bool:
    return False


class StopSequenceChecker:
    """Fed each generated token id; True once the decoded tail ends with a stop sequence.

    ``stop_sequence`` is the sequence that matched (None until one does).
    """

    __slots__ = ("_detokenizer", "_stops", "_tail", "stop_sequence")

    def __init__(
        self,
        tokenizer: TokenizerLike,
        stop_sequences: Sequence[str],
        *,
        prompt_ids: Sequence[int] = (),
    ) -> None:
        self._detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids=prompt_ids)
        self._stops = tuple(stop_sequences)
        self._tail = ""
        self.stop_sequence: str | None = None

    def __call__(self, token_id: int) -> bool:
        piece = self._detokenizer.push(token_id)
        if not piece:
            return self.stop_sequence is not None
        tail = self._tail + piece
        if len(tail) > MAX_STOP_TAIL_CHARS:
            tail = tail[-_KEPT_TAIL_CHARS:]
        self._tail = tail
        # TGI's "$": at the very end, or before one final newline
        before_newline = len(tail) - 1 if tail.endswith("\n") else None
        for stop in self._stops:
            if tail.endswith(stop) or (
                before_newline is not None and tail.endswith(stop, 0, before_newline)
            ):
                self.stop_sequence = stop
                return True
        return False


def make_stop_checker(
    tokenizer: TokenizerLike,
    stop_sequences: Sequence[str],
    *,
    prompt_ids: Sequence[int] = (),
) -> StopChecker:
    """A ``tgi_core.contract.StopChecker`` for one request (stateful: one per sequence).

    Args:
        tokenizer: the served tokenizer.
        stop_sequences: the request's ``stop`` strings; none gives a checker that never stops
            and never decodes.
        prompt_ids: the prompt, whose last tokens give the first generated token its context.
    """
    if not stop_sequences:
        return _never_stops
    return StopSequenceChecker(tokenizer, stop_sequences, prompt_ids=prompt_ids)
