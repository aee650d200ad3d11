"""Tokenizers rebuilt from GGUF metadata, checked against transformers' GGUF loader.

The real SmolLM2 GGUF (byte-level BPE) must give the same ids and text as
``AutoTokenizer.from_pretrained(folder, gguf_file=...)`` on a few hundred varied strings; small
GGUF files written here cover the sentencepiece ("llama") kind and the pre-tokenizer variants.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tgi_core.testing import smollm2_gguf
from tgi_core.tokenization import Tokenizer, TokenizerLoadError, load_tokenizer
from tgi_core.tokenization.gguf_metadata import GGUFMetadataError, read_gguf_metadata

SMOLLM2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>")

_PIECES = [
    "Hello, world!",
    "héllo wörld",
    "naïve café crème brûlée",
    "Ünïcödé",
    "ß ẞ ﬁ ﬀ",
    "日本語のテキスト",
    "中文字符测试",
    "한국어 텍스트",
    "Привет, мир",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שלום עולם",
    "हिन्दी पाठ",
    "ไทย",
    "e\u0301 combining",
    "Z\u0351\u0308a\u0336lgo",
    "😀",
    "👍🏽",
    "🧑\u200d🚀",
    "🇫🇷🇯🇵",
    "❤️",
    "👨\u200d👩\u200d👧\u200d👦 family",
    "🤖🤖🤖",
    "def f(x):\n    return x ** 2  # square",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    '{"key": [1, 2.5, -3e10], "nested": {"a": null}}',
    "<html><body class='x'>Hi</body></html>",
    "SELECT * FROM t WHERE id = 42;",
    "https://example.com/path?q=1&r=two#frag",
    "a_b-c.d/e\\f",
    "    four leading spaces",
    "trailing spaces   ",
    "\t\ttabs\tand\ttabs",
    "line\nbreak",
    "windows\r\nline",
    "\n\n\n",
    "   ",
    " ",
    "",
    "multiple     spaces   inside",
    "\u00a0nbsp\u00a0",
    "\u3000ideographic space",
    "zero\u200bwidth",
    "1234567890",
    "3.14159 2.71828",
    "1,000,000",
    "x=1.5e10",
    "I'm you're they've we'll she'd it's",
    "DON'T SHOUT",
    "CamelCaseIdentifier",
    "snake_case_identifier",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<repo_name>",
    "<|im_start|>user\nHi<|im_end|>\n",
    "text<|im_end|>more",
    "<|im_start|><|im_start|>",
    "<|im_start",
    "im_end|>",
    "< |im_start| >",
    "<<|im_end|>>",
    "$$\\frac{a}{b}$$",
    "~!@#%^&*()_+",
    "\u0000control\u0007chars",
    "\ufeffBOM",
    "\ufffd replacement",
    "a" * 200,
    "ab " * 50,
]


def _varied_strings() -> list[str]:
    rng = random.Random(1234)
    strings = list(_PIECES)
    while len(strings) < 320:
        parts = rng.sample(_PIECES, rng.randint(2, 4))
        separator = rng.choice(["", " ", "  ", "\n", "\t", " \n "])
        strings.append(separator.join(parts))
    return strings


VARIED_STRINGS = _varied_strings()


@pytest.fixture(scope="module")
def smollm2() -> tuple[Tokenizer, Any]:
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    ours = load_tokenizer(str(gguf))
    reference = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return ours, reference


def test_smollm2_ids_and_text_match_transformers(smollm2: tuple[Tokenizer, Any]) -> None:
    ours, reference = smollm2
    assert len(VARIED_STRINGS) >= 300
    for text in VARIED_STRINGS:
        ids = ours.encode(text)
        assert ids == reference.encode(text), text
        assert ours.encode(text, add_special_tokens=False) == reference.encode(
            text, add_special_tokens=False
        )
        assert ours.decode(ids) == reference.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(
            ids, skip_special_tokens=True
        )
    assert ours.encode_batch(VARIED_STRINGS) == [ours.encode(text) for text in VARIED_STRINGS]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=60))
def test_smollm2_matches_transformers_on_any_text(
    smollm2: tuple[Tokenizer, Any], text: str
) -> None:
    ours, reference = smollm2
    ids = ours.encode(text)
    assert ids == reference.encode(text)
    assert ours.decode(ids) == reference.decode(ids)


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.integers(min_value=0, max_value=49151), max_size=30))
def test_smollm2_decodes_any_ids_like_transformers(
    smollm2: tuple[Tokenizer, Any], ids: list[int]
) -> None:
    ours, reference = smollm2
    assert ours.decode(ids) == reference.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == reference.decode(
        ids, skip_special_tokens=True
    )


def test_smollm2_control_tokens_are_single_special_ids(smollm2: tuple[Tokenizer, Any]) -> None:
    ours, _ = smollm2
    for token in SMOLLM2_SPECIALS:
        token_id = ours.token_to_id(token)
        assert token_id is not None and ours.is_special(token_id)
        ids = ours.encode(f"a{token}b")
        assert token_id in ids and len(ids) == 3
        assert ours.decode(ids) == f"a{token}b"
        assert ours.decode(ids, skip_special_tokens=True) == "ab"
    assert not ours.is_special(ours.encode("hello")[0])
    assert ours.special_token_ids == frozenset(range(17))


def test_smollm2_tokenizer_facts(smollm2: tuple[Tokenizer, Any]) -> None:
    ours, reference = smollm2
    assert ours.vocab_size == len(reference) == 49152
    assert (ours.bos_token, ours.eos_token) == (reference.bos_token, reference.eos_token)
    assert ours.eos_token_ids == (reference.eos_token_id,) == (2,)
    assert ours.bos_token_id == reference.bos_token_id == 1
    assert ours.max_model_length == 8192
    assert ours.chat_template is not None
    assert ours.chat_template.source == reference.chat_template
    # SmolLM2 adds no BOS: the prompt is exactly the text's tokens
    assert ours.encode("hi") == reference.encode("hi", add_special_tokens=False)


def test_metadata_reader_matches_gguf_reader() -> None:
    path = smollm2_gguf()
    ours = read_gguf_metadata(path)
    reader = gguf.GGUFReader(path)
    fields = {key: f for key, f in reader.fields.items() if not key.startswith("GGUF.")}
    assert set(ours) == set(fields)
    for key, field in fields.items():
        assert ours[key] == field.contents(), key


def test_metadata_reader_rejects_other_files(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all, just some bytes")
    with pytest.raises(GGUFMetadataError, match="not a GGUF file"):
        read_gguf_metadata(bogus)
    with pytest.raises(TokenizerLoadError, match=r"bogus\.gguf"):
        load_tokenizer(str(bogus))


# --- small GGUF files written here ---------------------------------------------------------

_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world",
          "token", "ization", "café", "naïve", "über"]  # fmt: skip
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()éïü\u2581"


def _sentencepiece_vocab() -> tuple[list[str], list[int], list[float]]:
    """A sentencepiece-style vocabulary: specials, 256 byte tokens, characters, word pieces."""
    pieces: list[str] = []
    for word in _WORDS:
        spelled = "\u2581" + word
        for size in range(2, len(spelled) + 1):
            for start in range(len(spelled) - size + 1):
                piece = spelled[start : start + size]
                if piece not in pieces:
                    pieces.append(piece)
    chars = sorted(set(_CHARS))
    normal = chars + sorted(pieces, key=len)
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *normal, "<|user|>"]
    types = [2, 3, 3, *([6] * 256), *([1] * len(normal)), 4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(normal))] + [0.0]
    return tokens, types, scores


def _write_gguf(path: Path, architecture: str, **fields: Any) -> Path:
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(512)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    for name, value in fields.items():
        getattr(writer, f"add_{name}")(value)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _sentencepiece_gguf(path: Path, **extra: Any) -> Path:
    tokens, types, scores = _sentencepiece_vocab()
    fields: dict[str, Any] = {
        "tokenizer_model": "llama",
        "token_list": tokens,
        "token_types": types,
        "token_scores": scores,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "unk_token_id": 0,
        "chat_template": "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}",
    }
    fields.update(extra)
    return _write_gguf(path, "llama", **fields)


SENTENCEPIECE_TEXTS = [
    "the quick brown fox jumps over the lazy dog", "  hello   world", "Hello World!",
    "tokenization café naïve über", "emoji 😀 and 日本 bytes", "\nnew\nlines\n", "é", "",
    "x<|user|>y", "</s> inside", "<s>", "TheQuick", "  ", "über-naïve café", "a\tb",
]  # fmt: skip


def test_sentencepiece_gguf_matches_transformers(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    path = _sentencepiece_gguf(tmp_path / "sp.gguf")
    ours = load_tokenizer(str(path))
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="sp.gguf")
    for text in SENTENCEPIECE_TEXTS:
        ids = ours.encode(text)
        assert ids == reference.encode(text), text
        assert ours.decode(ids) == reference.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(
            ids, skip_special_tokens=True
        )
    # sentencepiece vocabularies get BOS by default; byte fallback spells unknown characters
    ids = ours.encode("日")
    assert ids[0] == 1
    assert [ours.id_to_token(i) for i in ids[1:]] == ["\u2581", "<0xE6>", "<0x97>", "<0xA5>"]
    assert ours.decode(ids, skip_special_tokens=True) == "日"
    user = ours.token_to_id("<|user|>")
    assert user is not None and not ours.is_special(user) and user in ours.encode("a<|user|>b")
    assert ours.eos_token_ids == (2,)
    assert ours.apply_chat_template([{"role": "user", "content": "hi"}]) == "<|user|>hi"


def test_sentencepiece_gguf_flags(tmp_path: Path) -> None:
    plain = load_tokenizer(str(_sentencepiece_gguf(tmp_path / "a.gguf")))
    no_bos = load_tokenizer(str(_sentencepiece_gguf(tmp_path / "b.gguf", add_bos_token=False)))
    with_eos = load_tokenizer(str(_sentencepiece_gguf(tmp_path / "c.gguf", add_eos_token=True)))
    no_prefix = load_tokenizer(
        str(_sentencepiece_gguf(tmp_path / "d.gguf", add_space_prefix=False))
    )
    assert no_bos.encode("the fox") == plain.encode("the fox")[1:]
    assert with_eos.encode("the fox") == [*plain.encode("the fox"), 2]
    assert with_eos.encode("the fox", add_special_tokens=False) == plain.encode("the fox")[1:]
    # without the space prefix, the first word is not spelled with "▁"
    first = no_prefix.encode("hello", add_special_tokens=False)
    assert no_prefix.id_to_token(first[0]) != "\u2581hello"
    assert no_prefix.decode(first) == "hello"
    assert plain.id_to_token(plain.encode("hello", add_special_tokens=False)[0]) == "\u2581hello"


def test_eos_ids_include_end_of_turn(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(str(_sentencepiece_gguf(tmp_path / "e.gguf", eot_token_id=100)))
    assert tokenizer.eos_token_ids == (2, 100)


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_byte_level_split_variants_match_transformers(tmp_path: Path, pre: str) -> None:
    from transformers import AutoTokenizer

    metadata = read_gguf_metadata(smollm2_gguf())
    path = _write_gguf(
        tmp_path / "bl.gguf",
        "llama",
        tokenizer_model="gpt2",
        tokenizer_pre=pre,
        token_list=metadata["tokenizer.ggml.tokens"],
        token_types=metadata["tokenizer.ggml.token_type"],
        token_merges=metadata["tokenizer.ggml.merges"],
        bos_token_id=1,
        eos_token_id=2,
        add_bos_token=False,
    )
    ours = load_tokenizer(str(path))
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="bl.gguf")
    for text in VARIED_STRINGS[:80]:
        assert ours.encode(text) == reference.encode(text), text
    # the variant's split is in effect: Llama 3 groups up to three digits, Qwen 2 splits each
    words = [word for word, _ in ours.backend.pre_tokenizer.pre_tokenize_str("12345")]
    assert words == (["123", "45"] if pre == "llama-bpe" else ["1", "2", "3", "4", "5"])


def test_unsupported_or_missing_tokenizer(tmp_path: Path) -> None:
    no_tokenizer = _write_gguf(tmp_path / "none.gguf", "llama")
    with pytest.raises(TokenizerLoadError, match="describes no tokenizer"):
        load_tokenizer(str(no_tokenizer))
    bert = _write_gguf(
        tmp_path / "bert.gguf", "bert", tokenizer_model="bert", token_list=["[PAD]", "a"]
    )
    with pytest.raises(TokenizerLoadError, match="kind 'bert'"):
        load_tokenizer(str(bert))
