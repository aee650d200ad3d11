"""Splitting ``inputs`` into text and image chunks, as TGI's router does, in linear time.

An image is a markdown image with an empty alt text, ``![](<url>)``, what TGI's regex
``!\\[\\]\\([^\\)]*\\)`` matches: the URL runs to the first ``)``. The regex costs quadratic
time on ``"![](" * n`` (every ``![](`` scans to the end for a ``)`` that never comes), so
``image_spans`` finds the same matches with two ``str.find`` calls per match and stops at the
first ``![](`` with no ``)`` after it (no later one can have one). Text around images is kept
as is (empty text between two images is dropped); images are counted before any is read
(``max_images_per_request``), then read in order under one deadline for the whole request,
and the first bad one fails the request. Only models that take images split their inputs; for
a text model the markdown is plain text.

The token accounting that follows (what each image costs in prompt tokens) is
model-specific: see ``tgi_vlm.llava_next.tokens``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from tgi_core.settings.slices import ImageLimits
from tgi_vlm.chunks import ImageChunk, InputChunk, TextChunk
from tgi_vlm.errors import ImageInputError
from tgi_vlm.fetch import DEFAULT_IMAGE_LIMITS, LoadedImage, read_image

__all__ = ["has_images", "image_spans", "images_of", "read_inputs", "split_inputs"]

_OPEN = "![]("


def image_spans(inputs: str) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of every markdown image, in order (TGI's regex matches)."""
    position = 0
    while (start := inputs.find(_OPEN, position)) >= 0:
        end = inputs.find(")", start + len(_OPEN))
        if end < 0:
            return
        yield start, end + 1
        position = end + 1


def read_inputs(
    inputs: str, limits: ImageLimits = DEFAULT_IMAGE_LIMITS
) -> Iterator[TextChunk | LoadedImage]:
    """The text chunks and decoded images of ``inputs``, read one at a time as iterated.

    Raises:
        ImageInputError: more images than ``limits.max_images_per_request`` (before any is
            read), or the first image that cannot be read, with TGI's message.
    """
    spans = list(image_spans(inputs))
    if len(spans) > limits.max_images_per_request:
        raise ImageInputError.too_many_images(len(spans), limits.max_images_per_request)
    deadline = time.monotonic() + limits.image_fetch_timeout
    position = 0
    for start, end in spans:
        if start != position:
            yield TextChunk(inputs[position:start])
        yield read_image(inputs[start:end], limits, deadline)
        position = end
    if position != len(inputs):
        yield TextChunk(inputs[position:])


def split_inputs(inputs: str, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> list[InputChunk]:
    """The text and image chunks of ``inputs``, images fetched and checked.

    Args:
        inputs: the request's ``inputs`` (or the templated chat prompt, where image chunks
            of the messages were turned into ``![](url)``).
        limits: bytes, count, pixels, the request's fetch time and the address rule.

    Raises:
        ImageInputError: as ``read_inputs``.
    """
    return [
        part.chunk if isinstance(part, LoadedImage) else part
        for part in read_inputs(inputs, limits)
    ]


def has_images(inputs: str) -> bool:
    """Whether ``inputs`` holds at least one markdown image (nothing is fetched)."""
    return next(image_spans(inputs), None) is not None


def images_of(chunks: list[InputChunk]) -> list[ImageChunk]:
    """The image chunks, in prompt order."""
    return [chunk for chunk in chunks if isinstance(chunk, ImageChunk)]
