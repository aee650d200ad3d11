"""``token_bytes``: the raw bytes each non-special token adds to the generated text.

Grammar-constrained generation matches the *text* against a regex, so the runner needs every
token's exact bytes, not its vocabulary spelling: byte-level BPE spells bytes with GPT-2's
printable alphabet (``"Ġhello"`` is ``b" hello"``), sentencepiece spells spaces ``"▁"`` and
unknown bytes ``"<0xE2>"``. The tokenizer's own decoder says which spelling it uses; it is
read here (from its serialized form) and applied token by token, step for step as the Rust
decoder would, minus what only acts on a whole text (``Strip`` of the first space, ``Fuse``).
A lone token may be part of a UTF-8 character, which is why the result is bytes.

Decoders other than ByteLevel / Replace / Metaspace / ByteFallback / Fuse / Strip (WordPiece,
CTC, BPE suffixes) cannot be spelled per token and are refused. Masking and matching live in
the runner (``tgi_hpu_kernels.sampling.grammar``); nothing here imports torch.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tgi_core.tokenization.gguf_tokenizer import bytes_to_unicode
from tgi_core.tokenization.protocol import TokenizerLike
from tgi_core.tokenization.tokenizer import Tokenizer

__all__ = ["VocabularyError", "token_bytes"]

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_NO_OP_STEPS = frozenset({"Fuse", "Strip"})  # act on the joined text only

# One decoder step applied to one token: str in (still spelled), or bytes (already raw).
_Step = Callable[[str | bytes], str | bytes]


class VocabularyError(ValueError):
    """The tokenizer's tokens cannot be turned into bytes (transparent or unknown decoder)."""


def token_bytes(tokenizer: TokenizerLike) -> dict[int, bytes]:
    """Each non-special token id of ``tokenizer`` and the bytes it adds to decoded text.

    Special tokens (BOS, EOS, chat markers) are left out: they never belong to the text a
    grammar constrains. Tokens that decode to nothing are left out too.

    Raises:
        VocabularyError: a SKIP_TOKENIZER_IN_TGI tokenizer (its "text" is ids), or one whose
            decoder is not byte-level or sentencepiece-style.
    """
    if not isinstance(tokenizer, Tokenizer):
        raise VocabularyError(
            f"{type(tokenizer).__name__} has no token vocabulary to spell tokens as text"
        )
    backend = tokenizer.backend
    if backend.decoder is None:
        raise VocabularyError("the tokenizer has no decoder: its tokens' text is unknown")
    steps = list(_steps(json.loads(backend.decoder.__getstate__())))
    special = tokenizer.special_token_ids
    spelled: dict[int, bytes] = {}
    for token, token_id in backend.get_vocab(with_added_tokens=True).items():
        if token_id in special:
            continue
        data = _spell(token, steps)
        if data:
            spelled[token_id] = data
    return spelled


def _spell(token: str, steps: list[_Step]) -> bytes:
    value: str | bytes = token
    for step in steps:
        value = step(value)
    return value if isinstance(value, bytes) else value.encode()


def _steps(config: Mapping[str, Any]) -> Iterator[_Step]:
    """The per-token steps of a serialized decoder (nested ``Sequence`` flattened)."""
    kind = config.get("type")
    if kind == "Sequence":
        for inner in config.get("decoders", ()):
            yield from _steps(inner)
    elif kind == "ByteLevel":
        yield _byte_level
    elif kind == "ByteFallback":
        yield _byte_fallback
    elif kind == "Metaspace":
        yield _replacer(str(config.get("replacement", "\u2581")), " ")
    elif kind == "Replace" and isinstance(config.get("pattern"), Mapping):
        pattern = config["pattern"].get("String")
        if not isinstance(pattern, str):  # a regex pattern cannot be applied token by token
            raise VocabularyError(f"unsupported Replace decoder pattern {config['pattern']}")
        yield _replacer(pattern, str(config.get("content", "")))
    elif kind not in _NO_OP_STEPS:
        raise VocabularyError(
            f"grammar-constrained generation needs a byte-level or sentencepiece tokenizer; "
            f"this one's decoder is {kind!r}"
        )


def _byte_level(value: str | bytes) -> str | bytes:
    if isinstance(value, bytes):
        return value
    table = _byte_level_table()
    # A character outside GPT-2's alphabet (an added token's text) stands for its own UTF-8.
    return b"".join(table.get(char) or char.encode() for char in value)


def _byte_fallback(value: str | bytes) -> str | bytes:
    if isinstance(value, str) and (match := _BYTE_FALLBACK.fullmatch(value)):
        return bytes([int(match.group(1), 16)])
    return value


def _replacer(pattern: str, content: str) -> _Step:
    def replace(value: str | bytes) -> str | bytes:
        return value.replace(pattern, content) if isinstance(value, str) else value

    return replace


@functools.cache
def _byte_level_table() -> dict[str, bytes]:
    """GPT-2's printable character -> the byte it spells."""
    return {char: bytes([byte]) for byte, char in bytes_to_unicode().items()}
