"""``split_inputs`` / ``has_images`` / ``images_of`` on text and data-URL images, and the
errors TGI's router answers for bad images."""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import sys
import zlib
from typing import Any

import pytest

from tgi_core.errors import ValidationError
from tgi_core.settings.slices import ImageLimits
from tgi_vlm import (
    ImageChunk,
    ImageInputError,
    TextChunk,
    has_images,
    image_spans,
    images_of,
    split_inputs,
)


@pytest.fixture(scope="module")
def png(make_image: Any) -> bytes:
    return make_image(5, 7, "PNG")


@pytest.fixture(scope="module")
def jpeg(make_image: Any) -> bytes:
    return make_image(9, 4, "JPEG", seed=1)


@pytest.mark.parametrize("prompt", ["", "Hello", "![alt](data:x) is not an image", "![](x"])
def test_text_only_prompt_is_one_text_chunk(prompt: str) -> None:
    assert not has_images(prompt)
    chunks = split_inputs(prompt)
    assert chunks == ([TextChunk(prompt)] if prompt else [])
    assert images_of(chunks) == []


def test_png_data_url(png: bytes, data_url: Any) -> None:
    [chunk] = split_inputs(data_url(png, "image/png"))
    assert chunk == ImageChunk(data=png, mimetype="image/png", height=5, width=7)


def test_jpeg_data_url(jpeg: bytes, data_url: Any) -> None:
    [chunk] = split_inputs(data_url(jpeg, "image/jpeg"))
    assert chunk == ImageChunk(data=jpeg, mimetype="image/jpeg", height=9, width=4)


def test_unknown_mimetype_guesses_the_format_and_keeps_the_mimetype(
    png: bytes, data_url: Any
) -> None:
    [chunk] = split_inputs(data_url(png, "application/octet-stream"))
    assert (chunk.mimetype, chunk.height, chunk.width) == ("application/octet-stream", 5, 7)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{png} What is this?", ["png", " What is this?"]),
        ("Look: {png} and {jpeg}!", ["Look: ", "png", " and ", "jpeg", "!"]),
        ("Describe {jpeg}", ["Describe ", "jpeg"]),
        # Two adjacent images: no empty text chunk between them.
        ("{png}{jpeg}", ["png", "jpeg"]),
        ("a{png}{png}b", ["a", "png", "png", "b"]),
    ],
)
def test_images_at_start_middle_end(
    template: str, expected: list[str], png: bytes, jpeg: bytes, data_url: Any
) -> None:
    urls = {"png": data_url(png, "image/png"), "jpeg": data_url(jpeg, "image/jpeg")}
    images = {"png": (png, "image/png", 5, 7), "jpeg": (jpeg, "image/jpeg", 9, 4)}
    prompt = template.format(**urls)
    assert has_images(prompt)
    chunks = split_inputs(prompt)
    assert chunks == [
        ImageChunk(*images[part]) if part in images else TextChunk(part) for part in expected
    ]
    assert images_of(chunks) == [chunk for chunk in chunks if isinstance(chunk, ImageChunk)]
    assert len(images_of(chunks)) == sum(part in images for part in expected)


def test_error_is_a_validation_error_with_tgis_message() -> None:
    with pytest.raises(ImageInputError) as raised:
        split_inputs("Look at ![](ftp://x) please")
    err = raised.value
    assert isinstance(err, ValidationError)
    assert err.detail == "invalid image content: ![](ftp://x)"
    assert str(err) == "Input validation error: invalid image content: ![](ftp://x)"
    assert err.status == 422
    assert err.to_body() == {
        "error": "Input validation error: invalid image content: ![](ftp://x)",
        "error_type": "validation",
    }


@pytest.mark.parametrize(
    ("prompt", "detail"),
    [
        ("![]()", "invalid image content: ![]()"),
        ("![](file:///etc/passwd)", "invalid image content: ![](file:///etc/passwd)"),
        # TGI shows the URL content without its "data:" and markdown.
        ("![](data:image/png,AAAA)", "invalid image content: image/png,AAAA"),
        ("![](data:a;b;base64,AAAA)", "invalid image content: a;b;base64,AAAA"),
        ("![](data:image/png;base32,AAAA)", "invalid image content: base32,AAAA"),
    ],
)
def test_invalid_image_content(prompt: str, detail: str) -> None:
    with pytest.raises(ImageInputError) as raised:
        split_inputs(prompt)
    assert raised.value.detail == detail


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("AAAA AAA", "Invalid symbol 32, offset 4."),
        ("AAB=", "Invalid last symbol 66, offset 2."),
        ("AAA", "Invalid padding"),
    ],
)
def test_invalid_base64(payload: str, reason: str) -> None:
    with pytest.raises(ImageInputError) as raised:
        split_inputs(f"x ![](data:image/png;base64,{payload}) y")
    assert raised.value.detail == f"base64 encoding is invalid: {reason}"
    assert str(raised.value) == f"Input validation error: base64 encoding is invalid: {reason}"


@pytest.mark.parametrize(
    ("mimetype", "detail"),
    [
        ("image/png", "invalid image: Format error decoding Png: not a valid Png image"),
        ("image/jpeg", "invalid image: Format error decoding Jpeg: not a valid Jpeg image"),
        ("text/plain", "invalid image: The image format could not be determined"),
    ],
)
def test_bytes_that_are_not_an_image(mimetype: str, detail: str, data_url: Any) -> None:
    with pytest.raises(ImageInputError) as raised:
        split_inputs(data_url(b"hello, not an image", mimetype))
    assert raised.value.detail == detail


def test_truncated_png_is_an_invalid_image(png: bytes, data_url: Any) -> None:
    with pytest.raises(ImageInputError) as raised:
        split_inputs(data_url(png[: len(png) // 2], "image/png"))
    assert raised.value.detail.startswith("invalid image: Format error decoding Png: ")


def test_jpeg_bytes_under_a_png_mimetype_are_refused(jpeg: bytes, data_url: Any) -> None:
    # TGI decodes with the format the MIME type names, not the one the bytes have.
    with pytest.raises(ImageInputError) as raised:
        split_inputs(data_url(jpeg, "image/png"))
    assert raised.value.detail.startswith("invalid image: ")


def test_first_bad_image_fails_the_request(png: bytes, data_url: Any) -> None:
    good = data_url(png, "image/png")
    prompt = f"{good} ![](data:image/png;base64,A) ![](ftp://x)"
    with pytest.raises(ImageInputError) as raised:
        split_inputs(prompt)
    assert raised.value.detail == "base64 encoding is invalid: Invalid input length: 1"


def test_url_ends_at_the_first_closing_parenthesis(png: bytes) -> None:
    encoded = base64.b64encode(png).decode()
    prompt = f"![](data:image/png;base64,{encoded})) tail"
    assert split_inputs(prompt)[1:] == [TextChunk(") tail")]


# TGI's regex, the reference for where images are (too slow for hostile prompts to use).
TGI_IMAGE_MARKDOWN = re.compile(r"!\[\]\([^)]*\)")


@pytest.mark.parametrize(
    "prompt",
    ["", "![](", "![]()", "a![](b)c![](d))e", "![](![](x)", "!![](x)![]y)", "![](\n)\n![](x"],
)
def test_image_spans_are_the_regex_matches(prompt: str) -> None:
    expected = [match.span() for match in TGI_IMAGE_MARKDOWN.finditer(prompt)]
    assert list(image_spans(prompt)) == expected


def test_parsing_a_hostile_prompt_is_linear() -> None:
    """``"![](" * n`` costs the regex n²/2 steps: 200,000 of them took ~3 minutes. Parsed in
    a child process with a generous bound (it takes milliseconds), so that a regression
    fails instead of freezing the test run."""
    code = (
        "from tgi_vlm import has_images, image_spans, split_inputs\n"
        "for prompt in ('![](' * 200_000, '![](' * 200_000 + ')', 'x![]' * 200_000):\n"
        "    has_images(prompt); list(image_spans(prompt))\n"
        "assert len(split_inputs('![](' * 200_000 + 'x![]' * 200_000)) == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_images_are_counted_before_any_is_read(png: bytes, data_url: Any) -> None:
    limits = ImageLimits(max_images_per_request=2)
    assert len(images_of(split_inputs(data_url(png, "image/png") * 2, limits))) == 2
    # The third is not even a valid image: the count is checked first.
    with pytest.raises(ImageInputError) as raised:
        split_inputs(data_url(png, "image/png") * 2 + "![](ftp://x)", limits)
    assert raised.value.detail == "`inputs` supports up to 2 images. Given: 3"
    with pytest.raises(ImageInputError) as raised:
        split_inputs("![]()" * 100_000)
    assert raised.value.detail == "`inputs` supports up to 8 images. Given: 100000"


def test_a_data_url_over_the_size_limit(png: bytes, data_url: Any) -> None:
    limits = ImageLimits(max_image_fetch_size=len(png) - 1)
    with pytest.raises(ImageInputError) as raised:
        split_inputs(data_url(png, "image/png"), limits)
    assert raised.value.detail == (
        f"Image size {len(png)} bytes exceeds maximum allowed size of {len(png) - 1} bytes"
    )


def test_pixels_are_checked_from_the_header(png: bytes, data_url: Any) -> None:
    with pytest.raises(ImageInputError) as raised:
        split_inputs(data_url(png, "image/png"), ImageLimits(max_image_pixels=34))
    assert raised.value.detail == "invalid image: Image size (35 pixels) exceeds limit of 34 pixels"
    [chunk] = split_inputs(data_url(png, "image/png"), ImageLimits(max_image_pixels=35))
    assert (chunk.height, chunk.width) == (5, 7)


def test_a_header_beyond_pillows_own_bound_is_refused_unread(data_url: Any) -> None:
    """A PNG whose header claims 100,000² pixels and holds none: refused (by Pillow's own
    decompression-bomb bound, which fires first) without decoding anything."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    fake = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    fake += chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    with pytest.raises(ImageInputError) as raised:
        split_inputs(data_url(fake, "image/png"))
    assert raised.value.detail.startswith("invalid image: Image size (10000000000 pixels) exceeds")
