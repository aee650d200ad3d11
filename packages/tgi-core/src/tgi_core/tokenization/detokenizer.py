"""Streaming detokenization: turn generated token ids into text, one token at a time.

TGI's algorithm (``Model.decode_token``): keep a short window of ids, decode it, and emit what
the newest token added to the text, unless the text ends in U+FFFD, which means the last
bytes are an incomplete UTF-8 character (byte-fallback or byte-level tokens split a
character); then wait for the next token. Decoding a window rather than one token keeps
tokenizer-specific spacing right (sentencepiece's leading "▁", the decoder's strip of the
first space). Each push costs one decode of the window (and one more when the window moves),
so a token costs O(window), never O(generated length).

What differs from TGI, on purpose:
- after ``MAX_PENDING_TOKENS`` pushes in a row that all end inside a character (invalid
  bytes from the model), the text that can no longer change is emitted, keeping back the
  last ``_NUM_UNSETTLED_CHARS`` characters, and once the window holds ``MAX_WINDOW_TOKENS``
  the wait is given up, so a model spewing bad bytes cannot make a decode cost more than
  ``MAX_WINDOW_TOKENS + 1`` tokens;
- ``flush()`` returns what is still held back when generation ends.

With these, ``"".join(pushes) + flush() == tokenizer.decode(ids)`` for every sequence whose
decode only grows at the end (all byte-level tokenizers, and byte-fallback ones on valid
UTF-8), which the tests check with hypothesis.
"""

from __future__ import annotations

from collections.abc import Sequence

from tgi_core.tokenization.protocol import TokenizerLike

__all__ = [
    "MAX_PENDING_TOKENS",
    "MAX_WINDOW_TOKENS",
    "NUM_PROMPT_CONTEXT_TOKENS",
    "IncrementalDetokenizer",
]

REPLACEMENT_CHAR = "\ufffd"
# TGI starts the window 5 tokens before the end of the prompt (prefix_offset = input_length - 5).
NUM_PROMPT_CONTEXT_TOKENS = 5
# A valid UTF-8 character is at most 4 bytes, so at most 3 pending tokens can still complete
# one; past this many pending tokens the pending bytes are invalid and only their tail can change.
MAX_PENDING_TOKENS = 4
MAX_WINDOW_TOKENS = 64
# An incomplete character is at most 3 bytes: one U+FFFD for lossy UTF-8 decoders, up to three
# for byte-fallback decoders (one per byte); only these last characters may still change.
_NUM_UNSETTLED_CHARS = 3


class IncrementalDetokenizer:
    """Decode a stream of token ids into text pieces.

    Args:
        tokenizer: any ``TokenizerLike``; a transparent one (SKIP_TOKENIZER_IN_TGI) yields each
            id as its decimal text, as TGI does.
        skip_special_tokens: drop special tokens from the text (TGI: False for the streamed
            token texts and stop sequences, True for ``generated_text``).
        prompt_ids: the prompt; its last ``NUM_PROMPT_CONTEXT_TOKENS`` ids seed the window so
            the first generated token keeps its leading space, as in TGI.
    """

    __slots__ = ("_num_emitted", "_pieces", "_read", "_skip", "_tokenizer", "_window")

    def __init__(
        self,
        tokenizer: TokenizerLike,
        *,
        skip_special_tokens: bool = False,
        prompt_ids: Sequence[int] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        context = [] if tokenizer.is_transparent else list(prompt_ids[-NUM_PROMPT_CONTEXT_TOKENS:])
        if skip_special_tokens:
            context = [token_id for token_id in context if not tokenizer.is_special(token_id)]
        # ids since the last clean point; the first `_read` of them are already accounted for
        self._window: list[int] = context
        self._read = len(context)
        # characters of decode(window) already emitted (or belonging to the prompt)
        self._num_emitted = len(self._decode(context)) if context else 0
        self._pieces: list[str] = []

    @property
    def text(self) -> str:
        """All text emitted so far."""
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def push(self, token_id: int) -> str:
        """Add one generated token; return the new text it completes (often "" mid-character)."""
        if self._tokenizer.is_transparent:
            return self._emit(self._tokenizer.decode([token_id]))
        if self._skip and self._tokenizer.is_special(token_id):
            return ""  # decode would drop it anyway; keeping it out keeps the window short
        window = self._window
        window.append(token_id)
        text = self._decode(window)
        if len(window) > MAX_WINDOW_TOKENS:  # give up waiting: emit everything, move on
            return self._emit_all(text, num_context_tokens=NUM_PROMPT_CONTEXT_TOKENS)
        if text.endswith(REPLACEMENT_CHAR):  # inside a character: wait, or emit what is settled
            num_pending = len(window) - self._read
            return self._emit_settled(text) if num_pending > MAX_PENDING_TOKENS else ""
        return self._emit_all(text) if len(text) > self._num_emitted else ""

    def flush(self) -> str:
        """Return the text still held back (an incomplete character at the very end)."""
        if self._tokenizer.is_transparent or not self._window:
            return ""
        return self._emit_all(self._decode(self._window))

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def _emit_all(self, text: str, num_context_tokens: int | None = None) -> str:
        """Emit the rest of ``text``; the tokens since the last read point become the context.

        The context may only start at a read point (a clean end of text), except when giving
        up on a long run of bad bytes, where it is cut to its last ``num_context_tokens``.
        """
        piece = text[self._num_emitted :]
        window = self._window
        del window[: self._read]
        if num_context_tokens is not None:
            del window[:-num_context_tokens]
        self._read = len(window)
        self._num_emitted = len(self._decode(window)) if window else 0
        return self._emit(piece)

    def _emit_settled(self, text: str) -> str:
        settled = len(text) - _NUM_UNSETTLED_CHARS
        if settled <= self._num_emitted:
            return ""
        piece = text[self._num_emitted : settled]
        self._num_emitted = settled
        return self._emit(piece)

    def _emit(self, piece: str) -> str:
        if piece:
            self._pieces.append(piece)
        return piece
