"""The interface every tokenizer of the server offers (a real one, or SKIP_TOKENIZER_IN_TGI's).

Only the shape lives here; ``tokenizer.Tokenizer`` and ``token_ids.TokenIdsTokenizer`` implement
it, and the detokenizer, the stop checker, validation and the routes depend on nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from tgi_core.tokenization.chat_template import ChatTemplate

__all__ = ["TokenOffset", "TokenizerLike"]

TokenOffset = tuple[int, str, int, int]
"""``(id, text, start, stop)``: one token of ``/tokenize``, offsets in bytes of the input."""


@runtime_checkable
class TokenizerLike(Protocol):
    """What the server needs from a tokenizer; safe to share between threads."""

    @property
    def is_transparent(self) -> bool:
        """True for SKIP_TOKENIZER_IN_TGI: inputs are token ids and decode writes ids."""
        ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_token(self) -> str | None: ...

    @property
    def bos_token_id(self) -> int | None: ...

    @property
    def eos_token(self) -> str | None: ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...

    @property
    def special_token_ids(self) -> frozenset[int]: ...

    @property
    def max_model_length(self) -> int | None: ...

    @property
    def chat_template(self) -> ChatTemplate | None: ...

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def encode_batch(
        self, texts: Sequence[str], *, add_special_tokens: bool = True
    ) -> list[list[int]]: ...

    def encode_with_offsets(
        self, text: str, *, add_special_tokens: bool = True
    ) -> list[TokenOffset]: ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str: ...

    def decode_tokens(self, ids: Sequence[int]) -> list[str]: ...

    def id_to_token(self, token_id: int) -> str | None: ...

    def is_special(self, token_id: int) -> bool: ...

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str: ...
