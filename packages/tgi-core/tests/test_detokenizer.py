"""Streaming detokenization: the pieces always add up to ``tokenizer.decode(ids)``.

Checked with hypothesis on the real SmolLM2 tokenizer (byte-level BPE, random ids) and on a
sentencepiece-style tokenizer built here (byte fallback, ``▁`` spaces) fed multi-byte text.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, decoders, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from tgi_core.tokenization import (
    IncrementalDetokenizer,
    TokenIdsTokenizer,
    Tokenizer,
)
from tgi_core.tokenization.detokenizer import MAX_WINDOW_TOKENS
from tgi_core.tokenization.gguf_tokenizer import bytes_to_unicode

SMOLLM2_VOCAB = 49152
_UNITS = [
    *"abcdefhilnorst ABC.,\n",
    "é",
    "ü",
    "ß",
    "€",
    "日",
    "本",
    "語",
    "😀",
    "👍🏽",
    "🧑\u200d🚀",
    "  ",
]
MULTI_BYTE_TEXT = st.lists(st.sampled_from(_UNITS), max_size=30).map("".join)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _byte_fallback_tokenizer() -> Tokenizer:
    """Sentencepiece-style BPE: byte fallback, Metaspace, and the llama decoder chain."""
    chars = list("abcdefhilnorstABC.,\n\u2581")
    pieces = ["\u2581t", "he", "\u2581the", "\u2581a", "in", "\u2581in", "er", "\u2581b", "é", "日"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for token in chars + pieces:
        vocab.setdefault(token, len(vocab))
    merges = [("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("\u2581", "a"), ("i", "n"),
              ("\u2581", "in"), ("e", "r"), ("\u2581", "b")]  # fmt: skip
    backend = Backend(BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<s>", "</s>")])
    return Tokenizer(backend, bos_token="<s>", eos_token="</s>")


BYTE_FALLBACK = _byte_fallback_tokenizer()


def _stream(
    tokenizer: Tokenizer,
    ids: Sequence[int],
    *,
    skip_special_tokens: bool = False,
    prompt_ids: Sequence[int] = (),
) -> tuple[list[str], str]:
    detokenizer = IncrementalDetokenizer(
        tokenizer, skip_special_tokens=skip_special_tokens, prompt_ids=prompt_ids
    )
    pieces = [detokenizer.push(token_id) for token_id in ids]
    pieces.append(detokenizer.flush())
    assert detokenizer.text == "".join(pieces)
    return pieces, detokenizer.text


@FAST
@given(
    ids=st.lists(st.integers(min_value=0, max_value=SMOLLM2_VOCAB - 1), max_size=60),
    skip=st.booleans(),
)
def test_smollm2_random_ids(smollm2: Tokenizer, ids: list[int], skip: bool) -> None:
    _, text = _stream(smollm2, ids, skip_special_tokens=skip)
    assert text == smollm2.decode(ids, skip_special_tokens=skip)


@FAST
@given(
    ids=st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=300),  # specials and the 256 byte tokens
            st.integers(min_value=0, max_value=SMOLLM2_VOCAB - 1),
        ),
        max_size=80,
    )
)
def test_smollm2_byte_heavy_ids(smollm2: Tokenizer, ids: list[int]) -> None:
    _, text = _stream(smollm2, ids)
    assert text == smollm2.decode(ids)


@FAST
@given(texts=st.lists(MULTI_BYTE_TEXT, min_size=1, max_size=4), skip=st.booleans())
def test_smollm2_encoded_text(smollm2: Tokenizer, texts: list[str], skip: bool) -> None:
    ids = [i for text in texts for i in [*smollm2.encode(text), 2]]  # <|im_end|> between turns
    _, streamed = _stream(smollm2, ids, skip_special_tokens=skip)
    assert streamed == smollm2.decode(ids, skip_special_tokens=skip)


@FAST
@given(texts=st.lists(MULTI_BYTE_TEXT, min_size=1, max_size=4), skip=st.booleans())
def test_byte_fallback_encoded_text(texts: list[str], skip: bool) -> None:
    ids = [i for text in texts for i in [*BYTE_FALLBACK.encode(text), 2]]
    _, streamed = _stream(BYTE_FALLBACK, ids, skip_special_tokens=skip)
    assert streamed == BYTE_FALLBACK.decode(ids, skip_special_tokens=skip)
    if skip:
        assert streamed == BYTE_FALLBACK.decode([i for i in ids if not BYTE_FALLBACK.is_special(i)])


@FAST
@given(prompt=MULTI_BYTE_TEXT, answer=MULTI_BYTE_TEXT)
def test_byte_fallback_with_prompt_context(prompt: str, answer: str) -> None:
    prompt_ids = BYTE_FALLBACK.encode(prompt)
    answer_ids = BYTE_FALLBACK.encode(answer, add_special_tokens=False)
    _, streamed = _stream(BYTE_FALLBACK, answer_ids, prompt_ids=prompt_ids)
    context = prompt_ids[-5:]
    assert (
        streamed == BYTE_FALLBACK.decode(context + answer_ids)[len(BYTE_FALLBACK.decode(context)) :]
    )


def test_leading_space_comes_from_the_prompt_like_tgi() -> None:
    prompt_ids = BYTE_FALLBACK.encode("the")
    generated = BYTE_FALLBACK.encode("the in", add_special_tokens=False)  # "▁the", "▁in"
    assert _stream(BYTE_FALLBACK, generated)[1] == "the in"  # decode strips the first space
    pieces, text = _stream(BYTE_FALLBACK, generated, prompt_ids=prompt_ids)
    assert pieces[:2] == [" the", " in"]
    assert text == " the in"


def test_multi_byte_characters_wait_for_their_last_byte(smollm2: Tokenizer) -> None:
    ids = BYTE_FALLBACK.encode("a😀", add_special_tokens=False)
    assert [BYTE_FALLBACK.id_to_token(i) for i in ids[-4:]] == [
        "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"
    ]  # fmt: skip
    assert _stream(BYTE_FALLBACK, ids)[0] == ["a", "", "", "", "😀", ""]
    smollm2_ids = smollm2.encode(" 😀 ok")
    assert len(smollm2_ids) == 3  # "ĠðŁĺ" holds three of the emoji's four bytes
    assert _stream(smollm2, smollm2_ids)[0] == ["", " 😀", " ok", ""]


def test_incomplete_tail_is_flushed(smollm2: Tokenizer) -> None:
    ids = smollm2.encode("ok 😀")[:-1]
    detokenizer = IncrementalDetokenizer(smollm2)
    assert "".join(detokenizer.push(i) for i in ids) == "ok"
    assert detokenizer.flush() == " \ufffd"
    assert detokenizer.flush() == ""


def _byte_id(tokenizer: Tokenizer, byte: int) -> int:
    token_id = tokenizer.token_to_id(bytes_to_unicode()[byte])
    assert token_id is not None
    return token_id


def test_invalid_bytes_are_emitted_once_settled(smollm2: Tokenizer) -> None:
    continuation = _byte_id(smollm2, 0x80)
    emoji = [_byte_id(smollm2, b) for b in "😀".encode()]
    ids = [continuation] * 20 + emoji + smollm2.encode(" done")
    pieces, text = _stream(smollm2, ids)
    assert text == smollm2.decode(ids)
    assert "".join(pieces[:20]).startswith("\ufffd" * 10)  # streamed before the emoji came


class _CountingTokenizer(Tokenizer):
    """Records the length of every decoded window."""

    def __init__(self, inner: Tokenizer) -> None:
        super().__init__(inner.backend, bos_token=inner.bos_token, eos_token=inner.eos_token)
        self.window_sizes: list[int] = []

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        self.window_sizes.append(len(ids))
        return super().decode(ids, skip_special_tokens=skip_special_tokens)


def test_cost_per_token_does_not_grow_with_the_output(smollm2: Tokenizer) -> None:
    counting = _CountingTokenizer(smollm2)
    text = "Streaming text, with accents (é, ü), emoji 😀👍🏽 and 日本語, goes on. " * 60
    ids = smollm2.encode(text)
    assert len(ids) > 1500
    _, streamed = _stream(counting, ids)
    assert streamed == text
    assert max(counting.window_sizes) <= 8
    assert len(counting.window_sizes) <= 2 * len(ids) + 1
    garbage = [_byte_id(smollm2, 0x80)] * 500
    counting.window_sizes.clear()
    _stream(counting, garbage)
    assert max(counting.window_sizes) <= MAX_WINDOW_TOKENS + 1


def test_transparent_tokenizer_streams_ids() -> None:
    detokenizer = IncrementalDetokenizer(TokenIdsTokenizer(), prompt_ids=[1, 2, 3])
    assert [detokenizer.push(i) for i in (5, 17, 0)] == ["5", "17", "0"]
    assert detokenizer.flush() == ""
    assert detokenizer.text == "5170"
