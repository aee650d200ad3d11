"""serde_json's syntax diagnosis: the same verdict as a real decoder, serde's words and places."""

from __future__ import annotations

import json
import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tgi_core.api.json_syntax import RECURSION_LIMIT, diagnose, too_deep

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
CONTROL = "control character (\\u0000-\\u001F) found while parsing a string"


def _decoder_accepts(data: bytes) -> bool:
    try:
        msgspec.json.decode(data)
    except msgspec.ValidationError:  # a number beyond its range: it stopped there, so the
        return _stdlib_accepts(data)  # standard library (no range limit) judges the rest
    except msgspec.DecodeError:
        return False
    return True


def _refuse_constant(name: str) -> object:
    raise ValueError(name)  # NaN and Infinity are not JSON


def _stdlib_accepts(data: bytes) -> bool:
    try:
        json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError included
        return False
    return True


@given(JSON_VALUES, st.sampled_from([0, 2, 4]))
def test_valid_documents_have_no_error(value: object, indent: int) -> None:
    data = json.dumps(value, indent=indent or None, ensure_ascii=indent == 4).encode()
    assert diagnose(data) is None


@settings(max_examples=400)
@given(JSON_VALUES, st.data())
def test_the_verdict_matches_a_real_decoder_on_damaged_documents(
    value: object, data: st.DataObject
) -> None:
    document = bytearray(json.dumps(value).encode())
    position = data.draw(st.integers(0, len(document)))
    action = data.draw(st.sampled_from(["delete", "insert", "replace"]))
    byte = data.draw(st.sampled_from(b'{}[],:"\\ \n0123456789-+.eEtrufalsn\x00\x1f\xff\xc3'))
    if action == "delete" and position < len(document):
        del document[position]
    elif action == "insert":
        document.insert(position, byte)
    elif position < len(document):
        document[position] = byte
    damaged = bytes(document)
    message = diagnose(damaged)
    assert (message is None) == _decoder_accepts(damaged), (damaged, message)
    if message is not None:
        assert re.search(r" at line \d+ column \d+$", message), message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a":}', "expected value at line 1 column 6"),
        (b"{1:2}", "key must be a string at line 1 column 2"),
        (b'{"a" 1}', "expected `:` at line 1 column 6"),
        (b"[1 2]", "expected `,` or `]` at line 1 column 4"),
        (b'{"a":1 "b":2}', "expected `,` or `}` at line 1 column 8"),
        (b"[1,]", "trailing comma at line 1 column 4"),
        (b"[[]", "EOF while parsing a list at line 1 column 3"),
        (b'"abc', "EOF while parsing a string at line 1 column 4"),
        (b'"a\x01"', f"{CONTROL} at line 1 column 3"),
        (b'"\\q"', "invalid escape at line 1 column 3"),
        (b'"\\ud800"', "lone leading surrogate in hex escape at line 1 column 7"),
        (b"trux", "expected ident at line 1 column 4"),
        (b"1.", "EOF while parsing a value at line 1 column 2"),
        (b"\xef\xbb\xbf{}", "expected value at line 1 column 1"),
        (b'{"a":1}\n  x', "trailing characters at line 2 column 3"),
    ],
)  # fmt: skip
def test_serdes_words_and_positions(data: bytes, message: str) -> None:
    assert diagnose(data) == message


def test_depth_is_checked_iteratively_at_serdes_limit() -> None:
    limit = b"[" * RECURSION_LIMIT + b"]" * RECURSION_LIMIT
    assert diagnose(limit) is None
    assert not too_deep(limit)
    beyond = b"[" + limit + b"]"
    assert too_deep(beyond)
    assert diagnose(beyond) == "recursion limit exceeded at line 1 column 129"
    huge = b"{" + b'"k":{' * 500_000  # far beyond Python's own recursion limit
    assert too_deep(huge)
    assert diagnose(huge) == "recursion limit exceeded at line 1 column 641"


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps("[{" * 1000 + '\\"[').encode()
    assert not too_deep(b"[" + text + b"]")
    assert diagnose(b"[" + text + b"]") is None
