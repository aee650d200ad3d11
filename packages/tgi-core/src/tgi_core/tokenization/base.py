"""``TokenizerBase``: the special tokens, length limit and chat template both tokenizers share.

``tokenizer.Tokenizer`` and ``token_ids.TokenIdsTokenizer`` differ only in how text becomes ids
and back; what a request reads about the model's tokens (BOS/EOS, special ids, the template) is
stored and answered here once. Encoding and decoding do not live here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tgi_core.tokenization.chat_template import TEMPLATE_NOT_FOUND, ChatTemplate, ChatTemplateError

__all__ = ["TokenizerBase"]


class TokenizerBase:
    """Read-only special tokens, length limit and chat template of a tokenizer."""

    def __init__(
        self,
        *,
        bos_token: str | None,
        bos_token_id: int | None,
        eos_token: str | None,
        eos_token_ids: Iterable[int],
        special_token_ids: Iterable[int],
        chat_template: ChatTemplate | None,
        max_model_length: int | None,
    ) -> None:
        self._bos_token = bos_token
        self._bos_token_id = bos_token_id
        self._eos_token = eos_token
        self._eos_token_ids = tuple(eos_token_ids)
        self._special_token_ids = frozenset(special_token_ids)
        self._chat_template = chat_template
        self._max_model_length = max_model_length

    @property
    def bos_token(self) -> str | None:
        return self._bos_token

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_token_id

    @property
    def eos_token(self) -> str | None:
        return self._eos_token

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos_token_ids

    @property
    def special_token_ids(self) -> frozenset[int]:
        return self._special_token_ids

    @property
    def max_model_length(self) -> int | None:
        return self._max_model_length

    @property
    def chat_template(self) -> ChatTemplate | None:
        return self._chat_template

    def is_special(self, token_id: int) -> bool:
        """Whether ``token_id`` is a special token (dropped by ``skip_special_tokens``)."""
        return token_id in self._special_token_ids

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render ``messages`` with the model's chat template (see ``ChatTemplate.render``).

        Raises:
            ChatTemplateError: no template ("template not found") or the render failed.
        """
        if self._chat_template is None:
            raise ChatTemplateError(TEMPLATE_NOT_FOUND)
        return self._chat_template.render(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, **extra
        )
