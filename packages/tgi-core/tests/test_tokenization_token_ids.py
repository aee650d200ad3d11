"""SKIP_TOKENIZER_IN_TGI: inputs are comma-separated token ids, outputs are ids as text."""

from __future__ import annotations

import pytest

from tgi_core.testing import smollm2_gguf
from tgi_core.tokenization import (
    ChatTemplateError,
    TokenIdsError,
    TokenIdsTokenizer,
    TokenizerLike,
    load_tokenizer,
    parse_token_ids,
)


def test_parses_comma_separated_ids() -> None:
    assert parse_token_ids("1,2,3") == [1, 2, 3]
    assert parse_token_ids(" 10 ,\t20,30 ") == [10, 20, 30]
    assert parse_token_ids("7") == [7]
    assert parse_token_ids("4,?,5", pad_token_id=0) == [4, 0, 5]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello", "'hello' is not a token id"),
        ("1,,2", "'' is not a token id"),
        ("", "'' is not a token id"),
        ("1,-2", "'-2' is not a token id"),
        ("1.5", "'1.5' is not a token id"),
        ("1,?", "'\\?' is not a token id"),
        ("١٢", "'١٢' is not a token id"),  # non-ASCII digits are not ids
    ],
)
def test_rejects_what_is_not_an_id(text: str, message: str) -> None:
    with pytest.raises(TokenIdsError, match=message) as error:
        parse_token_ids(text)
    assert isinstance(error.value, ValueError)
    assert "SKIP_TOKENIZER_IN_TGI" in str(error.value)


def test_rejects_ids_past_the_vocabulary() -> None:
    tokenizer = TokenIdsTokenizer(vocab_size=100)
    assert tokenizer.encode("0,99") == [0, 99]
    with pytest.raises(TokenIdsError, match="token id 100 is out of the vocabulary"):
        tokenizer.encode("5,100")


def test_decodes_ids_as_text_like_tgi() -> None:
    tokenizer = TokenIdsTokenizer()
    assert tokenizer.decode([5, 6, 7]) == "5,6,7"
    assert tokenizer.decode([5, 6], skip_special_tokens=True) == "5,6"
    assert tokenizer.decode([]) == ""
    assert tokenizer.decode_tokens([5, 6]) == ["5", "6"]
    assert tokenizer.id_to_token(12) == "12"
    assert tokenizer.encode_batch(["1,2", "3"]) == [[1, 2], [3]]
    assert tokenizer.is_transparent
    assert isinstance(tokenizer, TokenizerLike)


def test_offsets_point_at_each_entry() -> None:
    tokenizer = TokenIdsTokenizer()
    text = "12, 345 ,6"
    offsets = tokenizer.encode_with_offsets(text)
    assert offsets == [(12, "12", 0, 2), (345, "345", 4, 7), (6, "6", 9, 10)]
    data = text.encode()
    assert all(data[start:stop].decode() == piece for _, piece, start, stop in offsets)


def test_wrapping_borrows_the_real_tokenizers_facts() -> None:
    real = load_tokenizer(str(smollm2_gguf()))
    tokenizer = TokenIdsTokenizer.wrapping(real, pad_token_id=2)
    assert tokenizer.vocab_size == real.vocab_size
    assert tokenizer.eos_token_ids == real.eos_token_ids == (2,)
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.max_model_length == real.max_model_length
    assert tokenizer.is_special(2) and not tokenizer.is_special(100)
    assert tokenizer.special_token_ids == real.special_token_ids
    assert tokenizer.encode("1,?,3") == [1, 2, 3]
    messages = [{"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(messages) == real.apply_chat_template(messages)
    with pytest.raises(ChatTemplateError, match="template not found"):
        TokenIdsTokenizer().apply_chat_template(messages)
