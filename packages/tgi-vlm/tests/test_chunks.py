"""``chunks_to_string``: images back as data URLs, so that ``split_inputs`` gives the same
chunks again (TGI's ``ChunksToString``)."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tgi_vlm import ImageChunk, InputChunk, TextChunk, chunks_to_string, split_inputs


@pytest.fixture(scope="module")
def image_chunks(make_image: Any) -> list[ImageChunk]:
    png = make_image(3, 6, "PNG", mode="RGBA", seed=2)
    jpeg = make_image(8, 5, "JPEG", seed=3)
    return [
        ImageChunk(data=png, mimetype="image/png", height=3, width=6),
        ImageChunk(data=jpeg, mimetype="image/jpeg", height=8, width=5),
    ]


def test_image_is_a_data_url(image_chunks: list[ImageChunk]) -> None:
    png = image_chunks[0]
    text = chunks_to_string([TextChunk("a "), png, TextChunk(" b")])
    assert text == f"a ![](data:image/png;base64,{base64.b64encode(png.data).decode()}) b"


# Text that holds no markdown image of its own (a "![](" would be read back as one).
_TEXT = st.text(st.characters(blacklist_characters="!"), min_size=1, max_size=20)


@settings(max_examples=50, deadline=None)
@given(layout=st.lists(st.one_of(_TEXT, st.sampled_from([0, 1])), max_size=8))
def test_round_trip(layout: list[str | int], image_chunks: list[ImageChunk]) -> None:
    chunks: list[InputChunk] = []
    for part in layout:
        if isinstance(part, int):
            chunks.append(image_chunks[part])
        elif chunks and isinstance(chunks[-1], TextChunk):  # split_inputs merges text runs
            chunks[-1] = TextChunk(chunks[-1].text + part)
        else:
            chunks.append(TextChunk(part))
    assert split_inputs(chunks_to_string(chunks)) == chunks


def test_chunks_cross_msgspec(image_chunks: list[ImageChunk]) -> None:
    chunks: list[InputChunk] = [TextChunk("x"), *image_chunks]
    encoded = msgspec.msgpack.encode(chunks)
    assert msgspec.msgpack.decode(encoded, type=list[InputChunk]) == chunks
