"""``token_bytes``: the ids of any text spell back its exact UTF-8 bytes, token by token.

Checked on the real SmolLM2 tokenizer (byte-level BPE) and on sentencepiece-style ones built
here (byte fallback, ``▁`` spaces; the Replace chain of older Llama files and the Metaspace
decoder of newer ones), with multi-byte characters split across tokens.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, decoders, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE, WordPiece

from tgi_core.tokenization import (
    TokenIdsTokenizer,
    Tokenizer,
    VocabularyError,
    token_bytes,
)

TEXTS = [
    "Hello, world!",
    '{"name": "Zoë", "age": 42}',
    "日本語のテキスト",
    "emoji 😀👍🏽 and 🧑\u200d🚀",
    "  leading spaces\nand\ttabs",
    "€100 ß ü é",
]
TEXT = st.lists(st.sampled_from([*'abc xyz.{}"\n', "é", "€", "日", "😀", "ß"]), max_size=25)
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sentencepiece(decoder: decoders.Decoder) -> Tokenizer:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{byte:02X}>": 3 + byte for byte in range(256)})
    for token in [*'abcdexyz.{}"\n', "\u2581", "\u2581a", "\u2581ab", "é"]:
        vocab.setdefault(token, len(vocab))
    merges = [("\u2581", "a"), ("\u2581a", "b")]
    backend = Backend(BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    backend.decoder = decoder
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    return Tokenizer(backend, bos_token="<s>", eos_token="</s>")


REPLACE_CHAIN = _sentencepiece(
    decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
)
METASPACE = _sentencepiece(
    decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="\u2581")])
)
SPELLINGS = {tokenizer: token_bytes(tokenizer) for tokenizer in (REPLACE_CHAIN, METASPACE)}


def _spelled(tokenizer: Tokenizer, spelling: dict[int, bytes], text: str) -> bytes:
    return b"".join(spelling[i] for i in tokenizer.encode(text, add_special_tokens=False))


def test_smollm2_tokens_spell_their_text(smollm2: Tokenizer) -> None:
    spelling = token_bytes(smollm2)
    assert not spelling.keys() & smollm2.special_token_ids
    assert len(spelling) == smollm2.vocab_size - len(smollm2.special_token_ids)
    for text in TEXTS:
        assert _spelled(smollm2, spelling, text) == text.encode()
    assert spelling[smollm2.encode(" hello", add_special_tokens=False)[0]] == b" hello"
    # a token holding part of a character keeps its raw bytes: "😀" is split across tokens
    pieces = [spelling[i] for i in smollm2.encode("😀", add_special_tokens=False)]
    assert len(pieces) > 1 and b"".join(pieces) == "😀".encode()


@pytest.mark.parametrize("tokenizer", [REPLACE_CHAIN, METASPACE], ids=["replace", "metaspace"])
def test_sentencepiece_tokens_spell_spaces_and_fallback_bytes(tokenizer: Tokenizer) -> None:
    spelling = token_bytes(tokenizer)
    assert set(spelling) == set(range(3, tokenizer.vocab_size))  # specials left out
    assert spelling[3 + 0xE2] == b"\xe2"
    assert spelling[tokenizer.token_to_id("\u2581ab") or -1] == b" ab"
    assert spelling[tokenizer.token_to_id("é") or -1] == "é".encode()
    for text in TEXTS:
        assert _spelled(tokenizer, spelling, text) == _with_prefix_space(text)


def _with_prefix_space(text: str) -> bytes:
    """What a sentencepiece encoder saw: a "▁" before the first word, unless one is there."""
    return (text if not text or text.startswith(" ") else " " + text).encode()


@FAST
@given(TEXT.map("".join))
def test_any_text_round_trips(text: str) -> None:
    for tokenizer, spelling in SPELLINGS.items():
        spelled = _spelled(tokenizer, spelling, text)
        assert spelled == _with_prefix_space(text)


def test_tokenizers_without_token_text_are_refused() -> None:
    with pytest.raises(VocabularyError, match="TokenIdsTokenizer"):
        token_bytes(TokenIdsTokenizer(vocab_size=10))
    backend = Backend(WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    backend.decoder = decoders.WordPiece()
    with pytest.raises(VocabularyError, match="'WordPiece'"):
        token_bytes(Tokenizer(backend))
    backend.decoder = None
    with pytest.raises(VocabularyError, match="no decoder"):
        token_bytes(Tokenizer(backend))
