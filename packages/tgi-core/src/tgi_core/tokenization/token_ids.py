"""SKIP_TOKENIZER_IN_TGI: a tokenizer whose text *is* token ids.

With the variable set, TGI-Gaudi treats ``inputs`` as a comma-separated list of token ids
(``"1, 2, 3"``; ``?`` stands for the pad token) and writes generated ids back as text
(``decode([5, 6]) == "5,6"``; each streamed token's text is its id). Everything else a
tokenizer offers (EOS ids, chat template, length limit) can be borrowed from a real tokenizer
with ``TokenIdsTokenizer.wrapping``. The server reads the setting; nothing here does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tgi_core.tokenization.base import TokenizerBase
from tgi_core.tokenization.chat_template import ChatTemplate
from tgi_core.tokenization.protocol import TokenizerLike, TokenOffset

__all__ = ["TokenIdsError", "TokenIdsTokenizer", "parse_token_ids"]

_PAD_PLACEHOLDER = "?"


class TokenIdsError(ValueError):
    """``inputs`` is not a valid comma-separated list of token ids (a validation error)."""


def _parse_entry(entry: str, pad_token_id: int | None, vocab_size: int | None) -> int:
    if entry == _PAD_PLACEHOLDER and pad_token_id is not None:
        return pad_token_id
    if not entry.isascii() or not entry.isdigit():
        raise TokenIdsError(
            "`inputs` must be a comma-separated list of token ids when SKIP_TOKENIZER_IN_TGI "
            f"is set. Given: {entry!r} is not a token id"
        )
    token_id = int(entry)
    if vocab_size is not None and token_id >= vocab_size:
        raise TokenIdsError(f"token id {token_id} is out of the vocabulary (size {vocab_size})")
    return token_id


def _split(text: str) -> Iterable[tuple[str, int, int]]:
    """Each entry of the list, stripped, with its character span in ``text``."""
    start = 0
    for raw in text.split(","):
        stop = start + len(raw)
        stripped = raw.strip()
        left = start + (len(raw) - len(raw.lstrip()))
        yield stripped, left, left + len(stripped)
        start = stop + 1


def parse_token_ids(
    text: str, *, pad_token_id: int | None = None, vocab_size: int | None = None
) -> list[int]:
    """``"1, 2,3"`` -> ``[1, 2, 3]``.

    Raises:
        TokenIdsError: an empty entry, a non-integer, a negative id, or one past ``vocab_size``.
    """
    return [_parse_entry(entry, pad_token_id, vocab_size) for entry, _, _ in _split(text)]


class TokenIdsTokenizer(TokenizerBase):
    """``TokenizerLike`` for SKIP_TOKENIZER_IN_TGI (``is_transparent`` is True)."""

    def __init__(
        self,
        *,
        vocab_size: int | None = None,
        bos_token: str | None = None,
        bos_token_id: int | None = None,
        eos_token: str | None = None,
        eos_token_ids: Sequence[int] = (),
        pad_token_id: int | None = None,
        special_token_ids: Iterable[int] = (),
        chat_template: ChatTemplate | None = None,
        max_model_length: int | None = None,
    ) -> None:
        super().__init__(
            bos_token=bos_token,
            bos_token_id=bos_token_id,
            eos_token=eos_token,
            eos_token_ids=eos_token_ids,
            special_token_ids=special_token_ids,
            chat_template=chat_template,
            max_model_length=max_model_length,
        )
        self._vocab_size = vocab_size
        self._pad_token_id = pad_token_id

    @classmethod
    def wrapping(
        cls, tokenizer: TokenizerLike, *, pad_token_id: int | None = None
    ) -> TokenIdsTokenizer:
        """Borrow vocabulary size, special tokens, template and length limit from ``tokenizer``."""
        return cls(
            vocab_size=tokenizer.vocab_size,
            bos_token=tokenizer.bos_token,
            bos_token_id=tokenizer.bos_token_id,
            eos_token=tokenizer.eos_token,
            eos_token_ids=tokenizer.eos_token_ids,
            pad_token_id=pad_token_id,
            special_token_ids=tokenizer.special_token_ids,
            chat_template=tokenizer.chat_template,
            max_model_length=tokenizer.max_model_length,
        )

    is_transparent = True

    @property
    def vocab_size(self) -> int:
        """The wrapped tokenizer's vocabulary size; 0 when unknown (ids are then unchecked)."""
        return self._vocab_size if self._vocab_size is not None else 0

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Parse ``text`` as token ids (special tokens are never added: the ids are final)."""
        return parse_token_ids(text, pad_token_id=self._pad_token_id, vocab_size=self._vocab_size)

    def encode_batch(
        self, texts: Sequence[str], *, add_special_tokens: bool = True
    ) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def encode_with_offsets(
        self, text: str, *, add_special_tokens: bool = True
    ) -> list[TokenOffset]:
        """Each id with its entry's text and byte offsets in ``text``."""
        offsets: list[TokenOffset] = []
        for entry, start, _ in _split(text):
            token_id = _parse_entry(entry, self._pad_token_id, self._vocab_size)
            byte_start = len(text[:start].encode())
            offsets.append((token_id, entry, byte_start, byte_start + len(entry.encode())))
        return offsets

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """The ids as TGI writes them back: ``"5,6,7"``."""
        return ",".join(str(token_id) for token_id in ids)

    def decode_tokens(self, ids: Sequence[int]) -> list[str]:
        return [str(token_id) for token_id in ids]

    def id_to_token(self, token_id: int) -> str | None:
        return str(token_id)
