"""``fetch_image`` / ``split_inputs`` over real HTTP: a local ``ThreadingHTTPServer`` serves a
PNG, a 404 page, too-large bodies and slow answers. The server is on 127.0.0.1, which the
default limits refuse: these tests allow private addresses (``image_fetch_allow_private``)."""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import Any

import pytest

from tgi_core.settings.slices import ImageLimits
from tgi_vlm import ImageChunk, ImageInputError, TextChunk, fetch_image, split_inputs

ALLOW = ImageLimits(image_fetch_allow_private=True)
SHORT_TIMEOUT_S = 0.3


def test_fetches_a_png(image_server: Any) -> None:
    chunk = fetch_image(f"![]({image_server.base_url}/image.png)", ALLOW)
    height, width = image_server.png_size
    assert chunk == ImageChunk(
        data=image_server.png, mimetype="image/png", height=height, width=width
    )


def test_split_inputs_fetches_http_images(image_server: Any) -> None:
    url = f"{image_server.base_url}/image.png"
    chunks = split_inputs(f"What is ![]({url}) and ![]({url})?", ALLOW)
    image = fetch_image(f"![]({url})", ALLOW)
    assert chunks == [TextChunk("What is "), image, TextChunk(" and "), image, TextChunk("?")]


def test_default_limits() -> None:
    """Ours: TGI's router allows 1 GiB and has no count, pixel, time or address limit."""
    assert ImageLimits() == ImageLimits(
        max_image_fetch_size=20 * 1024 * 1024,
        max_images_per_request=8,
        max_image_pixels=7680 * 4320,
        image_fetch_timeout=10.0,
        image_fetch_allow_private=False,
    )


def test_an_error_page_is_read_and_fails_as_an_image(image_server: Any) -> None:
    # Like reqwest without error_for_status: a 404 is not a fetch error, its body is read.
    with pytest.raises(ImageInputError) as raised:
        fetch_image(f"![]({image_server.base_url}/missing)", ALLOW)
    assert raised.value.detail == "invalid image: The image format could not be determined"


def test_declared_size_over_the_limit(image_server: Any) -> None:
    limits = replace(ALLOW, max_image_fetch_size=1000)
    with pytest.raises(ImageInputError) as raised:
        fetch_image(f"![]({image_server.base_url}/large)", limits)
    num_bytes = image_server.num_large_bytes
    assert raised.value.detail == (
        f"Image size {num_bytes} bytes exceeds maximum allowed size of 1000 bytes"
    )
    assert str(raised.value).startswith("Input validation error: Image size ")


def test_undeclared_size_is_read_one_byte_past_the_limit(image_server: Any) -> None:
    limits = replace(ALLOW, max_image_fetch_size=1000)
    with pytest.raises(ImageInputError) as raised:
        fetch_image(f"![]({image_server.base_url}/large-unsized)", limits)
    assert raised.value.detail == "Image size 1001 bytes exceeds maximum allowed size of 1000 bytes"


def test_a_body_exactly_at_the_limit_is_accepted(image_server: Any) -> None:
    limits = replace(ALLOW, max_image_fetch_size=len(image_server.png))
    chunk = fetch_image(f"![]({image_server.base_url}/image.png)", limits)
    assert chunk.data == image_server.png


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_closed_port_is_a_fetch_error() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/image.png"
    with pytest.raises(ImageInputError) as raised:
        fetch_image(f"![]({url})", ALLOW)
    assert raised.value.detail.startswith(
        f"Could not fetch image: error sending request for url ({url}): "
    )
    assert "refused" in raised.value.detail.lower()
    assert str(raised.value).startswith("Input validation error: Could not fetch image: ")


@pytest.mark.parametrize(
    "url", ["http://[::1/image.png", "http://127.0.0.1:port/x.png", "http://exa mple.com/x"]
)
def test_unusable_url_is_a_builder_error(url: str) -> None:
    with pytest.raises(ImageInputError) as raised:
        fetch_image(f"![]({url})", ALLOW)
    assert raised.value.detail == "Could not fetch image: builder error"


def test_slow_headers_time_out(image_server: Any) -> None:
    url = f"{image_server.base_url}/slow-headers"
    with pytest.raises(ImageInputError) as raised:
        fetch_image(f"![]({url})", replace(ALLOW, image_fetch_timeout=SHORT_TIMEOUT_S))
    assert raised.value.detail == (
        f"Could not fetch image: error sending request for url ({url}): operation timed out"
    )


def test_a_trickling_body_is_bounded_by_the_whole_request_timeout(image_server: Any) -> None:
    # Every byte comes well within any socket timeout; only the total deadline stops it.
    url = f"{image_server.base_url}/slow-body"
    with pytest.raises(ImageInputError) as raised:
        fetch_image(f"![]({url})", replace(ALLOW, image_fetch_timeout=SHORT_TIMEOUT_S))
    assert raised.value.detail == (
        f"Could not fetch image: error decoding response body for url ({url}): operation timed out"
    )
