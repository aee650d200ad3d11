"""Reading one markdown image ``![](<url>)`` into an ``ImageChunk``, as TGI's router does.

``fetch_image`` takes the whole markdown match. ``data:<mime>;base64,<data>`` URLs are
decoded (strict standard base64); ``http://`` and ``https://`` URLs are fetched with
``urllib`` within ``--max-image-fetch-size`` and a timeout (see ``fetch_url``). The bytes
are then fully decoded with Pillow, to check them and to learn the image's size. Anything
else is ``invalid image content``. Like TGI (``reqwest`` without ``error_for_status``), an HTTP
error status is not itself an error: its body is read and fails as an image.

What lives elsewhere: splitting ``inputs`` (``tgi_vlm.inputs``), turning bytes into pixel
values (``tgi_vlm.llava_next.processing``).
"""

from __future__ import annotations

import http.client
import io
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Protocol

from PIL import Image, UnidentifiedImageError

from tgi_vlm.base64_standard import Base64DecodeError, decode_standard
from tgi_vlm.chunks import ImageChunk
from tgi_vlm.errors import ImageInputError

__all__ = [
    "DEFAULT_FETCH_LIMITS",
    "DEFAULT_FETCH_TIMEOUT_S",
    "DEFAULT_MAX_IMAGE_FETCH_SIZE",
    "FetchLimits",
    "decode_image",
    "fetch_image",
    "fetch_url",
    "open_image",
]

DEFAULT_MAX_IMAGE_FETCH_SIZE = 1_073_741_824  # TGI router's --max-image-fetch-size
DEFAULT_FETCH_TIMEOUT_S = 30.0  # reqwest's blocking client default

_READ_SIZE = 1 << 16
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


class _Response(Protocol):
    """What is used of an ``http.client.HTTPResponse`` (or of an ``HTTPError`` wrapping one)."""

    headers: Message

    def read1(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """Limits on fetching an http(s) image: its size in bytes and the whole request's time."""

    max_image_fetch_size: int = DEFAULT_MAX_IMAGE_FETCH_SIZE
    timeout_s: float = DEFAULT_FETCH_TIMEOUT_S


DEFAULT_FETCH_LIMITS = FetchLimits()


def fetch_image(markdown: str, limits: FetchLimits = DEFAULT_FETCH_LIMITS) -> ImageChunk:
    """Reads the image a markdown match ``![](<url>)`` names.

    Raises:
        ImageInputError: with TGI's message for the first thing wrong.
    """
    if markdown.startswith(("![](http://", "![](https://")):
        data = fetch_url(markdown[len("![](") : -1], limits)
        height, width, image_format = decode_image(data, None)
        mimetype = _FORMAT_MIMES.get(image_format or "", "application/octet-stream")
        return ImageChunk(data=data, mimetype=mimetype, height=height, width=width)
    if markdown.startswith("![](data:"):
        return _data_url_image(markdown[len("![](data:") : -1])
    raise ImageInputError.invalid_content(markdown)


def _data_url_image(content: str) -> ImageChunk:
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
    height, width, _ = decode_image(data, _MIME_FORMATS.get(mimetype))
    return ImageChunk(data=data, mimetype=mimetype, height=height, width=width)


def decode_image(data: bytes, image_format: str | None) -> tuple[int, int, str | None]:
    """Decodes ``data`` fully, as ``image_format`` (a Pillow format name) or as guessed.

    Returns:
        (height, width, Pillow's format name).

    Raises:
        ImageInputError: ``invalid image: ...`` when the bytes do not decode.
    """
    formats = [image_format] if image_format else None
    try:
        with Image.open(io.BytesIO(data), formats=formats) as image:
            image.load()
            return image.height, image.width, image.format
    except UnidentifiedImageError as err:
        if image_format is None:
            raise ImageInputError.invalid_image("The image format could not be determined") from err
        name = _FORMAT_NAMES.get(image_format, image_format)
        raise ImageInputError.invalid_image(
            f"Format error decoding {name}: not a valid {name} image"
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        name = _FORMAT_NAMES.get(image_format or "", image_format or "image")
        raise ImageInputError.invalid_image(f"Format error decoding {name}: {err}") from err


def open_image(data: bytes) -> Image.Image:
    """The decoded image of an ``ImageChunk``'s bytes (already checked by ``decode_image``)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def fetch_url(url: str, limits: FetchLimits = DEFAULT_FETCH_LIMITS) -> bytes:
    """GETs ``url``: at most ``limits.max_image_fetch_size`` bytes, within ``limits.timeout_s``.

    A ``Content-Length`` over the limit is refused before the body is read; without one, the
    body is read up to one byte past the limit. Every socket operation waits at most
    ``timeout_s`` and the body is read in pieces as they arrive, with the deadline checked
    between pieces, so a fetch ends within about twice ``timeout_s`` even when the server
    trickles its answer.

    Raises:
        ImageInputError: ``Could not fetch image: ...`` or ``Image size ... exceeds ...``.
    """
    deadline = time.monotonic() + limits.timeout_s
    max_size = limits.max_image_fetch_size
    response = _open(url, limits.timeout_s)
    try:
        declared = _content_length(response)
        if declared is not None and declared > max_size:
            raise ImageInputError.too_large(declared, max_size)
        data = _read_limited(response, max_size + 1, deadline)
    except (OSError, http.client.HTTPException) as err:  # TimeoutError is an OSError
        raise ImageInputError.fetch_failed(f"error decoding response body for url ({url})") from err
    finally:
        response.close()
    if len(data) > max_size:
        raise ImageInputError.too_large(len(data), max_size)
    return data


def _open(url: str, timeout_s: float) -> _Response:
    """The response to GET ``url`` (redirects followed), reqwest's errors otherwise."""
    try:
        response: _Response = urllib.request.urlopen(url, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        return err  # the error page is the body, as with reqwest
    except (ValueError, http.client.InvalidURL) as err:  # not a URL that can be requested
        raise ImageInputError.fetch_failed("builder error") from err
    except (OSError, http.client.HTTPException) as err:  # refused, timeout, TLS, bad answer
        raise ImageInputError.fetch_failed(f"error sending request for url ({url})") from err
    return response


def _content_length(response: _Response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _read_limited(response: _Response, max_bytes: int, deadline: float) -> bytes:
    """Reads until EOF or ``max_bytes``. ``read1`` returns what has arrived (``read`` would
    wait for the whole amount, a socket timeout only bounding each wait), so the deadline
    checked between reads bounds the whole body."""
    parts: list[bytes] = []
    num_bytes = 0
    while num_bytes < max_bytes:
        if time.monotonic() > deadline:
            raise TimeoutError("operation timed out")
        part = response.read1(min(_READ_SIZE, max_bytes - num_bytes))
        if not part:
            break
        parts.append(part)
        num_bytes += len(part)
    return b"".join(parts)
