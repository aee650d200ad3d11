"""Strict standard base64 decoding with the errors of Rust's ``base64`` 0.22 crate.

TGI decodes data URLs with ``base64::engine::general_purpose::STANDARD``: the standard
alphabet, canonical ``=`` padding required, no whitespace, no non-zero trailing bits. Python's
``base64.b64decode(validate=True)`` is laxer (it accepts trailing bits) and says other things,
so the checks are made here first, in the crate's order, with the crate's messages
(``Invalid symbol 32, offset 4.``); the bytes are then decoded by the standard library.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["Base64DecodeError", "decode_standard"]

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_VALUES = {symbol: value for value, symbol in enumerate(_ALPHABET)}
_PAD = ord("=")


class Base64DecodeError(ValueError):
    """The text is not canonical standard base64; ``str()`` is the crate's message."""


def _invalid_symbol(offset: int, byte: int) -> Base64DecodeError:
    return Base64DecodeError(f"Invalid symbol {byte}, offset {offset}.")


def decode_standard(text: str) -> bytes:
    """Decodes ``text`` as canonical, padded standard base64.

    Raises:
        Base64DecodeError: the first problem the Rust crate reports for this input.
    """
    data = text.encode()
    if not data:
        return b""
    remainder = len(data) % 4
    if remainder == 1 and data[-1] != _PAD and data[-1] not in _VALUES:
        # The crate reports a stray last byte (a newline, say) before anything else.
        raise _invalid_symbol(len(data) - 1, data[-1])
    # The last quad (complete or not) is checked on its own, like the crate's suffix.
    suffix_start = len(data) - (remainder or 4)
    for offset in range(suffix_start):
        if data[offset] not in _VALUES:
            raise _invalid_symbol(offset, data[offset])
    num_symbols, last_symbol_value = _check_suffix(data, suffix_start)
    num_padding = len(data) - suffix_start - num_symbols
    if (num_padding + num_symbols) % 4 != 0:
        raise Base64DecodeError("Invalid padding")
    # 2 symbols carry 1 byte (4 spare bits), 3 carry 2 bytes (2 spare bits); 4 carry 3 bytes.
    spare_bits = {2: 4, 3: 2, 4: 0}[num_symbols]
    if last_symbol_value & ((1 << spare_bits) - 1):
        offset = suffix_start + num_symbols - 1
        raise Base64DecodeError(f"Invalid last symbol {data[offset]}, offset {offset}.")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as err:  # unreachable after the checks above; kept as a guard
        raise Base64DecodeError(str(err)) from err


def _check_suffix(data: bytes, start: int) -> tuple[int, int]:
    """Checks the last quad; returns its number of symbols and the last symbol's value."""
    num_symbols = 0
    num_padding = 0
    first_padding = 0
    last_value = 0
    for index, byte in enumerate(data[start:]):
        if byte == _PAD:
            if index < 2:  # padding after fewer than two symbols of the quad
                raise _invalid_symbol(start + index, byte)
            if num_padding == 0:
                first_padding = index
            num_padding += 1
            continue
        if num_padding:  # a symbol after padding: the padding is the invalid byte
            raise _invalid_symbol(start + first_padding, _PAD)
        if byte not in _VALUES:
            raise _invalid_symbol(start + index, byte)
        last_value = _VALUES[byte]
        num_symbols += 1
    if num_symbols < 2:
        raise Base64DecodeError(f"Invalid input length: {start + num_symbols}")
    return num_symbols, last_value
