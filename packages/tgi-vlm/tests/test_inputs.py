"""``split_inputs`` / ``has_images`` / ``images_of`` on text and data-URL images, and the
errors TGI's router answers for bad images."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tgi_core.errors import ValidationError
from tgi_vlm import (
    ImageChunk,
    ImageInputError,
    TextChunk,
    has_images,
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
