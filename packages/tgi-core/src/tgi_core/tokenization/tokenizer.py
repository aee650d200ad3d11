"""``Tokenizer``: the server's tokenizer, a thin wrapper over a ``tokenizers.Tokenizer``.

Everything a request needs is precomputed at construction (special ids, EOS ids, template),
so ``encode``/``decode`` are single calls into the Rust tokenizer with no per-call rebuild; the
object is immutable and safe to share between threads. Finding and reading the files is
``loader``'s job; rendering chat templates is ``chat_template``'s.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer as Backend

from tgi_core.tokenization.base import TokenizerBase
from tgi_core.tokenization.chat_template import ChatTemplate
from tgi_core.tokenization.protocol import TokenOffset

__all__ = ["TokenizationError", "Tokenizer"]


class TokenizationError(ValueError):
    """The Rust tokenizer refused the text (e.g. a lone surrogate); TGI's "tokenizer error"."""


class Tokenizer(TokenizerBase):
    """A loaded tokenizer: encode/decode, special tokens, EOS ids and the chat template.

    Args:
        backend: the ``tokenizers.Tokenizer``; truncation and padding are switched off (the
            server validates lengths itself) and it must not be changed afterwards.
        bos_token, eos_token: the special tokens' text, as templates see them.
        eos_token_ids: every id that ends generation (generation_config or the tokenizer).
        chat_template: the template to render chats with, if the model has one.
        max_model_length: the longest input the model takes, if known.
    """

    is_transparent = False

    def __init__(
        self,
        backend: Backend,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        eos_token_ids: Iterable[int] = (),
        chat_template: ChatTemplate | None = None,
        max_model_length: int | None = None,
    ) -> None:
        backend.no_truncation()
        backend.no_padding()
        self._backend = backend
        # encode_batch_fast (tokenizers >= 0.20) skips offsets; older ones have encode_batch
        self._encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
        eos_ids = tuple(eos_token_ids)
        if not eos_ids and eos_token is not None:
            eos_id = backend.token_to_id(eos_token)
            eos_ids = (eos_id,) if eos_id is not None else ()
        super().__init__(
            bos_token=bos_token,
            bos_token_id=backend.token_to_id(bos_token) if bos_token is not None else None,
            eos_token=eos_token,
            eos_token_ids=eos_ids,
            special_token_ids=(
                token_id
                for token_id, added in backend.get_added_tokens_decoder().items()
                if added.special
            ),
            chat_template=chat_template,
            max_model_length=max_model_length,
        )
        self._vocab_size = backend.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self._vocab_size}, bos_token={self._bos_token!r}, "
            f"eos_token_ids={self._eos_token_ids}, chat_template={self._chat_template is not None})"
        )

    @property
    def backend(self) -> Backend:
        """The wrapped ``tokenizers.Tokenizer`` (read-only use)."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._vocab_size

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (with BOS/EOS when the tokenizer adds them)."""
        return self.encode_batch([text], add_special_tokens=add_special_tokens)[0]

    def encode_batch(
        self, texts: Sequence[str], *, add_special_tokens: bool = True
    ) -> list[list[int]]:
        """``encode`` for many texts at once, in parallel inside the Rust tokenizer.

        The batch call releases the GIL and, in its "fast" form, skips offset tracking.
        """
        try:
            encodings = self._encode_batch(list(texts), add_special_tokens=add_special_tokens)
        except TypeError as exc:  # the binding's answer to text Rust cannot hold
            raise TokenizationError(str(exc)) from exc
        return [encoding.ids for encoding in encodings]

    def encode_with_offsets(
        self, text: str, *, add_special_tokens: bool = True
    ) -> list[TokenOffset]:
        """``/tokenize``: ``(id, text, start, stop)`` per token, offsets in bytes of ``text``.

        As TGI's Rust tokenizer reports them: a token holding part of a character (byte-level
        or byte-fallback pieces of an emoji) spans the whole character, so ``text`` is always
        the exact slice of the input; tokens the post-processor added (BOS) are ``"", 0, 0``.
        """
        try:
            encoding = self._backend.encode(text, add_special_tokens=add_special_tokens)
        except TypeError as exc:
            raise TokenizationError(str(exc)) from exc
        # The Python binding reports character offsets; they convert back exactly because the
        # Rust offsets always fall on character boundaries.
        char_spans: list[tuple[int, int]] = encoding.offsets
        to_byte = list(itertools.accumulate((len(c.encode()) for c in text), initial=0))
        data = text.encode()
        tokens: list[TokenOffset] = []
        for token_id, (char_start, char_stop) in zip(encoding.ids, char_spans, strict=True):
            start, stop = to_byte[char_start], to_byte[char_stop]
            tokens.append((token_id, data[start:stop].decode(), start, stop))
        return tokens

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (no clean-up of spaces, as TGI decodes)."""
        text: str = self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return text

    def decode_batch(
        self, sequences: Sequence[Sequence[int]], *, skip_special_tokens: bool = False
    ) -> list[str]:
        texts: list[str] = self._backend.decode_batch(
            [list(ids) for ids in sequences], skip_special_tokens=skip_special_tokens
        )
        return texts

    def decode_tokens(self, ids: Sequence[int]) -> list[str]:
        """Each id decoded on its own, special tokens kept (TGI's texts for top/prefill tokens)."""
        return self.decode_batch([[token_id] for token_id in ids])

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry of ``token_id`` (e.g. ``"Ġhello"``), None if out of range."""
        token: str | None = self._backend.id_to_token(token_id)
        return token

    def token_to_id(self, token: str) -> int | None:
        token_id: int | None = self._backend.token_to_id(token)
        return token_id
