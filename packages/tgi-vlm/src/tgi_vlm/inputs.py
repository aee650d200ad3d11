"""Splitting ``inputs`` into text and image chunks, exactly as TGI's router does.

An image is a markdown image with an empty alt text, ``![](<url>)``, matched by TGI's regex
``!\\[\\]\\([^\\)]*\\)``: the URL runs to the first ``)``. Text around images is kept as is
(empty text between two images is dropped), images are read in order and the first bad one
fails the request. Only models that take images split their inputs; for a text model the
markdown is plain text.

The token accounting that follows (what each image costs in prompt tokens) is
model-specific: see ``tgi_vlm.llava_next.tokens``.
"""

from __future__ import annotations

import re

from tgi_vlm.chunks import ImageChunk, InputChunk, TextChunk
from tgi_vlm.fetch import DEFAULT_FETCH_LIMITS, FetchLimits, fetch_image

__all__ = ["IMAGE_MARKDOWN", "has_images", "images_of", "split_inputs"]

IMAGE_MARKDOWN = re.compile(r"!\[\]\([^)]*\)")


def split_inputs(inputs: str, limits: FetchLimits = DEFAULT_FETCH_LIMITS) -> list[InputChunk]:
    """The text and image chunks of ``inputs``, images fetched and decoded.

    Args:
        inputs: the request's ``inputs`` (or the templated chat prompt, where image chunks
            of the messages were turned into ``![](url)``).
        limits: ``--max-image-fetch-size`` and the fetch timeout.

    Raises:
        ImageInputError: the first image that cannot be read, with TGI's message.
    """
    chunks: list[InputChunk] = []
    start = 0
    for match in IMAGE_MARKDOWN.finditer(inputs):
        if match.start() != start:
            chunks.append(TextChunk(inputs[start : match.start()]))
        chunks.append(fetch_image(match.group(), limits))
        start = match.end()
    if start != len(inputs):
        chunks.append(TextChunk(inputs[start:]))
    return chunks


def has_images(inputs: str) -> bool:
    """Whether ``inputs`` holds at least one markdown image (nothing is fetched)."""
    return IMAGE_MARKDOWN.search(inputs) is not None


def images_of(chunks: list[InputChunk]) -> list[ImageChunk]:
    """The image chunks, in prompt order."""
    return [chunk for chunk in chunks if isinstance(chunk, ImageChunk)]
