"""``decode_standard``: round trips, and the Rust ``base64`` 0.22 crate's errors, exactly."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tgi_vlm.base64_standard import Base64DecodeError, decode_standard


@given(st.binary(max_size=300))
def test_decodes_what_the_standard_library_encodes(data: bytes) -> None:
    assert decode_standard(base64.b64encode(data).decode()) == data


def test_empty_input_is_empty_bytes() -> None:
    assert decode_standard("") == b""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # A space in the body (byte 32 at offset 4).
        ("AAAA AAA", "Invalid symbol 32, offset 4."),
        ("QUJD\nREVG", "Invalid symbol 10, offset 4."),
        # URL-safe alphabet is not the standard one.
        ("ab-_", "Invalid symbol 45, offset 2."),
        # A stray last byte (newline) is reported before anything else.
        ("AAAA AAA\n", "Invalid symbol 10, offset 8."),
        # Padding in the middle is an invalid byte of the body.
        ("AA==AAAA", "Invalid symbol 61, offset 2."),
        # Padding after fewer than two symbols of the last quad.
        ("A===", "Invalid symbol 61, offset 1."),
        ("AAAA=", "Invalid symbol 61, offset 4."),
        # A symbol after padding: the first padding byte is reported.
        ("AA=A", "Invalid symbol 61, offset 2."),
        ("AAAAAA=A", "Invalid symbol 61, offset 6."),
    ],
)
def test_invalid_symbol(text: str, message: str) -> None:
    with pytest.raises(Base64DecodeError) as err:
        decode_standard(text)
    assert str(err.value) == message


@pytest.mark.parametrize("text", ["AA", "AAA", "AA=", "AAAAAA", "QUI", "QUJDRA="])
def test_non_canonical_padding(text: str) -> None:
    with pytest.raises(Base64DecodeError) as err:
        decode_standard(text)
    assert str(err.value) == "Invalid padding"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # 'B' = 1: one byte needs the low 4 bits of the 2nd symbol clear.
        ("AB==", "Invalid last symbol 66, offset 1."),
        ("QR==", "Invalid last symbol 82, offset 1."),
        # 'B' = 1: two bytes need the low 2 bits of the 3rd symbol clear.
        ("AAB=", "Invalid last symbol 66, offset 2."),
        ("QUJDREVGAAB=", "Invalid last symbol 66, offset 10."),
    ],
)
def test_non_zero_trailing_bits(text: str, message: str) -> None:
    # Python's decoder accepts these; the crate does not.
    assert base64.b64decode(text, validate=True)
    with pytest.raises(Base64DecodeError) as err:
        decode_standard(text)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [("A", "Invalid input length: 1"), ("AAAAA", "Invalid input length: 5")],
)
def test_invalid_length(text: str, message: str) -> None:
    # One symbol carries 6 bits: not a byte. The crate counts the symbols read.
    with pytest.raises(Base64DecodeError) as err:
        decode_standard(text)
    assert str(err.value) == message


def test_error_is_a_value_error() -> None:
    assert issubclass(Base64DecodeError, ValueError)
