"""Reading one markdown image ``![](<url>)``: its bytes, checked and decoded once.

``read_image`` takes the whole markdown match. ``data:<mime>;base64,<data>`` URLs are
decoded (strict standard base64); ``http://`` and ``https://`` URLs are fetched by
``tgi_vlm.net.http_get`` (public addresses only unless allowed, redirects re-checked, within
the request's deadline and ``max_image_fetch_size``). Anything else is ``invalid image
content``. Like TGI (``reqwest`` without ``error_for_status``), an HTTP error status is not
itself an error: its body is read and fails as an image.

The bytes are then decoded with Pillow, once: the header first, whose size is checked against
``max_image_pixels`` before any pixel is decoded (decompression bombs), then the pixels. The
caller gets the decoded image with the chunk, so nothing downstream decodes again.

What lives elsewhere: splitting ``inputs`` (``tgi_vlm.inputs``), the fetch itself
(``tgi_vlm.net``), turning pixels into a model's inputs (``tgi_vlm.llava_next``).
"""

from __future__ import annotations

import io
import time
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

from tgi_core.settings.slices import ImageLimits
from tgi_vlm.base64_standard import Base64DecodeError, decode_standard
from tgi_vlm.chunks import ImageChunk
from tgi_vlm.errors import ImageInputError
from tgi_vlm.net import http_get

__all__ = ["DEFAULT_IMAGE_LIMITS", "LoadedImage", "decode_image", "fetch_image", "read_image"]

DEFAULT_IMAGE_LIMITS = ImageLimits()

# TGI decodes a data URL with the format its MIME type names; other types are guessed.
_MIME_FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
    "image/tiff": "TIFF",
}
_FORMAT_MIMES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif"}
_FORMAT_MIMES |= {"WEBP": "image/webp", "TIFF": "image/tiff"}
# How the Rust ``image`` crate names formats in its errors.
_FORMAT_NAMES = {"PNG": "Png", "JPEG": "Jpeg", "GIF": "Gif", "WEBP": "WebP", "TIFF": "Tiff"}


class LoadedImage(NamedTuple):
    """An image of the prompt: its chunk (encoded bytes, size) and its decoded pixels."""

    chunk: ImageChunk
    image: Image.Image


def fetch_image(markdown: str, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> ImageChunk:
    """The chunk of one markdown image, read within ``limits`` (a whole fetch timeout)."""
    deadline = time.monotonic() + limits.image_fetch_timeout
    return read_image(markdown, limits, deadline).chunk


def read_image(markdown: str, limits: ImageLimits, deadline: float) -> LoadedImage:
    """Reads and decodes the image a markdown match ``![](<url>)`` names.

    Args:
        markdown: the whole match, ``![](`` to ``)``.
        limits: bytes, pixels and the address rule (the count is the caller's).
        deadline: when fetching must be over (``time.monotonic``), shared by a request's
            images.

    Raises:
        ImageInputError: with TGI's message for the first thing wrong.
    """
    if markdown.startswith(("![](http://", "![](https://")):
        data = http_get(
            markdown[len("![](") : -1],
            deadline=deadline,
            max_bytes=limits.max_image_fetch_size,
            allow_private=limits.image_fetch_allow_private,
        )
        image = decode_image(data, None, limits.max_image_pixels)
        mimetype = _FORMAT_MIMES.get(image.format or "", "application/octet-stream")
        return LoadedImage(ImageChunk(data, mimetype, image.height, image.width), image)
    if markdown.startswith("![](data:"):
        return _data_url_image(markdown[len("![](data:") : -1], limits)
    raise ImageInputError.invalid_content(markdown)


def _data_url_image(content: str, limits: ImageLimits) -> LoadedImage:
    tokens = content.split(";")
    if len(tokens) != 2:
        raise ImageInputError.invalid_content(content)
    mimetype, payload = tokens
    if not payload.startswith("base64,"):
        raise ImageInputError.invalid_content(payload)
    try:
        data = decode_standard(payload[len("base64,") :])
    except Base64DecodeError as err:
        raise ImageInputError.invalid_base64(str(err)) from err
    if len(data) > limits.max_image_fetch_size:
        raise ImageInputError.too_large(len(data), limits.max_image_fetch_size)
    image = decode_image(data, _MIME_FORMATS.get(mimetype), limits.max_image_pixels)
    return LoadedImage(ImageChunk(data, mimetype, image.height, image.width), image)


def decode_image(data: bytes, image_format: str | None, max_pixels: int) -> Image.Image:
    """``data`` decoded, as ``image_format`` (a Pillow format name) or as guessed.

    The header's size is checked before the pixels are decoded.

    Raises:
        ImageInputError: ``invalid image: ...`` when the bytes do not decode or hold more
            than ``max_pixels`` pixels.
    """
    formats = [image_format] if image_format else None
    name = _FORMAT_NAMES.get(image_format or "", image_format or "image")
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError as err:
        if image_format is None:
            raise ImageInputError.invalid_image("The image format could not be determined") from err
        raise ImageInputError.invalid_image(
            f"Format error decoding {name}: not a valid {name} image"
        ) from err
    except Image.DecompressionBombError as err:  # Pillow's own bound, above ours by default
        raise ImageInputError.invalid_image(str(err)) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageInputError.invalid_image(f"Format error decoding {name}: {err}") from err
    num_pixels = image.width * image.height
    if num_pixels > max_pixels:
        image.close()
        raise ImageInputError.too_many_pixels(num_pixels, max_pixels)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ImageInputError.invalid_image(f"Format error decoding {name}: {err}") from err
    return image
