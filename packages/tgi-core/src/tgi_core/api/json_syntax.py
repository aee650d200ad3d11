"""serde_json's syntax diagnosis of a JSON document, independent of the decoder in use.

TGI parses request bodies with serde_json (through axum), so a malformed body is answered
with serde's words: ``trailing comma at line 1 column 15``. The decoder we use (msgspec)
words its errors differently, and its wording changes between releases; the answer to a
client must not. So when msgspec rejects a document, ``diagnose`` walks it again and names
the first error as serde_json would: its error kind, its message and its position.

serde_json also refuses nesting deeper than 128 arrays/objects ("recursion limit
exceeded"); ``too_deep`` answers that question for a document msgspec accepted, cheaply
for the common case (a body with few brackets is never walked).

The walk is iterative (no recursion, whatever the depth) and tokenizes with regexes, so a
multi-megabyte body costs milliseconds. Positions follow serde_json: 1-based line, and the
column counts bytes since the last newline up to and including the offending byte (0 for
an error at the very start of an empty document).
"""

from __future__ import annotations

import re

__all__ = ["RECURSION_LIMIT", "diagnose", "too_deep"]

RECURSION_LIMIT = 128
"""serde_json's default nesting limit (arrays and objects)."""

_WS = re.compile(rb"[ \t\n\r]*")
_STRING_BODY = re.compile(rb'[^"\\\x00-\x1f]*')
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_HEX4 = re.compile(rb"[0-9a-fA-F]{4}")
_ESCAPES = frozenset(b'"\\/bfnrt')
_LITERALS = (b"true", b"false", b"null")
# A whole string (skipped as one token) or one bracket.
_STRING_OR_BRACKET = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class JsonSyntaxError(Exception):
    """One serde_json error: ``message`` (serde's words) at byte ``index`` (peek position)."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.message = message
        self.index = index


def diagnose(data: bytes) -> str | None:
    """serde_json's message for the first syntax error of ``data``, or None if it has none.

    The message ends in serde's ``at line L column C``. Invalid UTF-8 inside a string is
    ``invalid unicode code point``, as serde_json's ``from_slice`` reports it.
    """
    try:
        _Walker(data).document()
    except JsonSyntaxError as exc:
        line, column = _position(data, exc.index)
        return f"{exc.message} at line {line} column {column}"
    return None


def too_deep(data: bytes, limit: int = RECURSION_LIMIT) -> bool:
    """Whether arrays/objects nest deeper than ``limit`` anywhere in ``data``.

    A cheap count rules out most documents; only those with more brackets than the limit
    are scanned (whole strings are skipped, so brackets inside them do not count).
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(data):
        char = match.group()
        if char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif char in (b"]", b"}"):
            depth -= 1
    return False


def _position(data: bytes, index: int) -> tuple[int, int]:
    """serde_json's (line, column) for the byte count ``index``."""
    index = min(index, len(data))
    line = data.count(b"\n", 0, index) + 1
    column = index - (data.rfind(b"\n", 0, index) + 1)
    return line, column


class _Walker:
    """An iterative JSON syntax check that raises serde_json's first error."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def fail(self, message: str, at: int | None = None) -> JsonSyntaxError:
        """An error at serde's peek position: one past the offending byte (or the end)."""
        index = self.i if at is None else at
        return JsonSyntaxError(message, min(index + 1, len(self.data)))

    def skip_ws(self) -> int | None:
        """Skip whitespace; the next byte, or None at the end."""
        match = _WS.match(self.data, self.i)
        self.i = match.end() if match else self.i
        return self.data[self.i] if self.i < len(self.data) else None

    def document(self) -> None:
        self.value()
        if self.skip_ws() is not None:
            raise self.fail("trailing characters")

    def value(self) -> None:
        """One value, containers included, with an explicit stack instead of recursion."""
        stack: list[int] = []  # the open containers' closing bytes
        expect_value = True
        while True:
            if expect_value:
                char = self.skip_ws()
                if char is None:
                    raise self.fail("EOF while parsing a value")
                if char in b"[{":
                    if len(stack) >= RECURSION_LIMIT:
                        raise self.fail("recursion limit exceeded")
                    self.i += 1
                    closing = ord("]") if char == ord("[") else ord("}")
                    following = self.skip_ws()
                    if following == closing:
                        self.i += 1
                    else:
                        stack.append(closing)
                        if closing == ord("}"):
                            self.key(following)
                        continue
                else:
                    self.scalar(char)
            if not stack:
                return
            expect_value = self.after_item(stack)

    def after_item(self, stack: list[int]) -> bool:
        """After an item of the innermost container: a comma (True: a value follows) or the
        container's end (False: the enclosing container's turn)."""
        closing = stack[-1]
        is_object = closing == ord("}")
        char = self.skip_ws()
        if char is None:
            raise self.fail(
                "EOF while parsing an object" if is_object else "EOF while parsing a list"
            )
        if char == closing:
            self.i += 1
            stack.pop()
            return False
        if char != ord(","):
            raise self.fail("expected `,` or `}`" if is_object else "expected `,` or `]`")
        self.i += 1
        following = self.skip_ws()
        if following == closing:
            raise self.fail("trailing comma")
        if is_object:
            self.key(following)
        return True

    def key(self, char: int | None) -> None:
        """An object's key and its colon."""
        if char is None:
            raise self.fail("EOF while parsing an object")
        if char != ord('"'):
            raise self.fail("key must be a string")
        self.string()
        char = self.skip_ws()
        if char is None:
            raise self.fail("EOF while parsing an object")
        if char != ord(":"):
            raise self.fail("expected `:`")
        self.i += 1

    def scalar(self, char: int) -> None:
        if char == ord('"'):
            self.string()
        elif char == ord("-") or 48 <= char <= 57:
            self.number()
        else:
            self.literal(char)

    def literal(self, char: int) -> None:
        for word in _LITERALS:
            if char == word[0]:
                for offset, expected in enumerate(word):
                    index = self.i + offset
                    if index >= len(self.data):
                        raise JsonSyntaxError("EOF while parsing a value", len(self.data))
                    if self.data[index] != expected:
                        raise self.fail("expected ident", index)
                self.i += len(word)
                return
        raise self.fail("expected value")

    def number(self) -> None:
        match = _NUMBER.match(self.data, self.i)
        if match is None:
            at = self.i + 1 if self.data[self.i] == ord("-") else self.i
            if at >= len(self.data):
                raise JsonSyntaxError("EOF while parsing a value", len(self.data))
            raise self.fail("invalid number", at)
        end = match.end()
        if end < len(self.data) and self.data[end] in b".eE0123456789":
            # serde fails on the byte after a dangling '.' or exponent (EOF if there is none)
            at = end if self.data[end] in b"0123456789" else end + 1
            if at < len(self.data) and self.data[end] in b"eE" and self.data[at] in b"+-":
                at += 1
            if at >= len(self.data):
                raise JsonSyntaxError("EOF while parsing a value", len(self.data))
            raise self.fail("invalid number", at)
        self.i = end

    def string(self) -> None:
        """A string from its opening quote; its bytes must be UTF-8, as serde requires."""
        start = self.i + 1
        self.i = start
        data = self.data
        while True:
            self.i = _STRING_BODY.match(data, self.i).end()  # type: ignore[union-attr]
            if self.i >= len(data):
                raise JsonSyntaxError("EOF while parsing a string", len(data))
            char = data[self.i]
            if char == ord('"'):
                self.i += 1
                try:
                    data[start : self.i - 1].decode("utf-8")
                except UnicodeDecodeError:
                    raise JsonSyntaxError("invalid unicode code point", self.i) from None
                return
            if char == ord("\\"):
                self.escape()
            else:
                raise self.fail("control character (\\u0000-\\u001F) found while parsing a string")

    def escape(self) -> None:
        data = self.data
        self.i += 1
        if self.i >= len(data):
            raise JsonSyntaxError("EOF while parsing a string", len(data))
        char = data[self.i]
        if char == ord("u"):
            code = self.hex4()
            if 0xD800 <= code <= 0xDFFF:  # a surrogate: a leading one, then a trailing one
                follows = data[self.i : self.i + 2] == b"\\u"
                if code >= 0xDC00 or not follows:
                    raise JsonSyntaxError("lone leading surrogate in hex escape", self.i)
                self.i += 1
                if not 0xDC00 <= self.hex4() <= 0xDFFF:
                    raise JsonSyntaxError("lone leading surrogate in hex escape", self.i)
        elif char in _ESCAPES:
            self.i += 1
        else:
            raise self.fail("invalid escape")

    def hex4(self) -> int:
        """The four hex digits after the ``u`` at ``self.i``; leaves ``self.i`` past them."""
        data = self.data
        if _HEX4.match(data, self.i + 1) is None:
            if self.i + 5 > len(data):
                raise JsonSyntaxError("EOF while parsing a string", len(data))
            raise self.fail("invalid escape")
        code = int(data[self.i + 1 : self.i + 5], 16)
        self.i += 5
        return code
