"""The pieces of a prompt: ``TextChunk`` and ``ImageChunk`` (TGI's router ``Chunk``).

Plain ``msgspec`` structs, so a list of chunks crosses the front end / engine boundary as
cheaply as the rest of a request. An image travels as its encoded bytes and MIME type, as
TGI sends it to its model shards; its height and width (known once the bytes were decoded
during validation) are kept so that token counts need no second decode.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import TypeAlias

import msgspec

__all__ = ["ImageChunk", "InputChunk", "TextChunk", "chunks_to_string"]


class TextChunk(msgspec.Struct, frozen=True, tag="text"):
    text: str


class ImageChunk(msgspec.Struct, frozen=True, tag="image"):
    """An image of the prompt: encoded bytes (PNG, JPEG, ...) and its decoded size."""

    data: bytes
    mimetype: str
    height: int
    width: int


InputChunk: TypeAlias = TextChunk | ImageChunk


def chunks_to_string(chunks: Iterable[InputChunk]) -> str:
    """The chunks back as one ``inputs`` string, images as base64 data URLs.

    TGI's ``ChunksToString``: what a backend without image support receives, and a way to
    re-validate a prompt (the long-generation re-queue appends text to it).
    """
    parts: list[str] = []
    for chunk in chunks:
        if isinstance(chunk, TextChunk):
            parts.append(chunk.text)
        else:
            encoded = base64.b64encode(chunk.data).decode()
            parts.append(f"![](data:{chunk.mimetype};base64,{encoded})")
    return "".join(parts)
