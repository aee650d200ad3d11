"""What a hostile prompt's images must not do, each against the real local HTTP server:
reach internal addresses (refused by default, allowed by ``image_fetch_allow_private``),
escape through redirects, send endless or bombing bodies, or hold the worker for long."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest

from tgi_core.settings import Settings
from tgi_core.settings.slices import ImageLimits
from tgi_vlm import ImageInputError, fetch_image, split_inputs
from tgi_vlm.net import MAX_REDIRECTS, is_public_address

from .conftest import BOMB_SIDE, HUGE_DECLARED_BYTES

ALLOW = ImageLimits(image_fetch_allow_private=True)


def fetch_error(url: str, limits: ImageLimits = ALLOW) -> str:
    with pytest.raises(ImageInputError) as raised:
        fetch_image(f"![]({url})", limits)
    assert str(raised.value) == f"Input validation error: {raised.value.detail}"
    return raised.value.detail


def test_loopback_is_refused_by_default_and_allowed_by_the_setting(image_server: Any) -> None:
    url = f"{image_server.base_url}/image.png"
    assert fetch_error(url, ImageLimits()) == (
        f"Could not fetch image: error sending request for url ({url}): "
        "127.0.0.1 is not a public address"
    )
    assert fetch_image(f"![]({url})", ALLOW).data == image_server.png


def test_a_host_name_is_judged_by_its_addresses(image_server: Any) -> None:
    url = image_server.base_url.replace("127.0.0.1", "localhost") + "/image.png"
    detail = fetch_error(url, ImageLimits())
    assert detail.startswith(f"Could not fetch image: error sending request for url ({url}): ")
    assert detail.endswith(" is not a public address")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.1.1", "240.0.0.1", "255.255.255.255", "192.0.2.1",
        "::1", "::", "fe80::1", "fe80::1%1", "fc00::1", "ff02::1", "2001:db8::1",
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1",
        "64:ff9b::a9fe:a9fe", "2002:7f00:1::",
    ],
)  # fmt: skip
def test_internal_addresses_are_not_public(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"]
)
def test_public_addresses_are_public(address: str) -> None:
    assert is_public_address(address)


def test_the_setting_is_a_launcher_flag_and_an_environment_variable() -> None:
    assert not Settings.from_sources([], {}).server().images.image_fetch_allow_private
    from_flag = Settings.from_sources(["--image-fetch-allow-private"], {})
    from_env = Settings.from_sources([], {"IMAGE_FETCH_ALLOW_PRIVATE": "true"})
    assert from_flag.server().images.image_fetch_allow_private
    assert from_env.server().images.image_fetch_allow_private
    environ = {
        "MAX_IMAGE_FETCH_SIZE": "1000",
        "MAX_IMAGES_PER_REQUEST": "2",
        "MAX_IMAGE_PIXELS": "300",
        "IMAGE_FETCH_TIMEOUT": "0.5",
    }
    assert Settings.from_sources([], environ).server().images == ImageLimits(1000, 2, 300, 0.5)
    alias = Settings.from_sources([], {"MAX_IMAGE_BYTES": "77"}).server().images
    assert alias.max_image_fetch_size == 77


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x.png", "gopher://x"])
def test_a_redirect_to_another_scheme_is_refused(image_server: Any, target: str) -> None:
    url = f"{image_server.base_url}/redirect?to={quote(target)}"
    scheme = target.partition(":")[0]
    assert fetch_error(url) == (
        f"Could not fetch image: error following redirect for url ({url}): "
        f"a redirect to a {scheme} URL is not allowed"
    )


def test_a_redirect_within_http_is_followed(image_server: Any) -> None:
    url = f"{image_server.base_url}/redirect?to=/image.png"
    assert fetch_image(f"![]({url})", ALLOW).data == image_server.png


def test_each_redirect_hop_is_checked_again(
    image_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No public server can be reached from a test, so 127.0.0.1 plays the public host here:
    its redirect to another loopback address (the metadata service in real life) is refused
    before any connection, even though the first hop was allowed."""
    monkeypatch.setattr("tgi_vlm.net.is_public_address", lambda address: address == "127.0.0.1")
    target = image_server.base_url.replace("127.0.0.1", "127.0.0.2") + "/image.png"
    url = f"{image_server.base_url}/redirect?to={quote(target)}"
    assert fetch_image(f"![]({image_server.base_url}/image.png)", ImageLimits()).data
    assert fetch_error(url, ImageLimits()) == (
        f"Could not fetch image: error sending request for url ({target}): "
        "127.0.0.2 is not a public address"
    )


def test_redirects_are_limited(image_server: Any) -> None:
    url = f"{image_server.base_url}/redirect-loop"
    assert fetch_error(url) == (
        f"Could not fetch image: error following redirect for url ({url}): too many redirects"
    )
    assert MAX_REDIRECTS == 10


def test_an_endless_body_stops_one_byte_past_the_limit(image_server: Any) -> None:
    limits = replace(ALLOW, max_image_fetch_size=1 << 20)
    assert fetch_error(f"{image_server.base_url}/huge", limits) == (
        f"Image size {(1 << 20) + 1} bytes exceeds maximum allowed size of {1 << 20} bytes"
    )


def test_a_declared_huge_body_is_refused_unread(image_server: Any) -> None:
    assert fetch_error(f"{image_server.base_url}/huge-declared") == (
        f"Image size {HUGE_DECLARED_BYTES} bytes exceeds maximum allowed size of "
        f"{ImageLimits().max_image_fetch_size} bytes"
    )


def test_a_decompression_bomb_is_refused_from_its_header(image_server: Any) -> None:
    num_pixels = BOMB_SIDE * BOMB_SIDE
    max_pixels = ImageLimits().max_image_pixels
    assert num_pixels > max_pixels
    assert fetch_error(f"{image_server.base_url}/bomb.png") == (
        f"invalid image: Image size ({num_pixels} pixels) exceeds limit of {max_pixels} pixels"
    )
    allowed = replace(ALLOW, max_image_pixels=num_pixels)
    chunk = fetch_image(f"![]({image_server.base_url}/bomb.png)", allowed)
    assert (chunk.height, chunk.width) == (BOMB_SIDE, BOMB_SIDE)


def test_a_slow_body_is_cut_at_the_request_deadline(image_server: Any) -> None:
    url = f"{image_server.base_url}/slow-body"
    assert fetch_error(url, replace(ALLOW, image_fetch_timeout=0.3)) == (
        f"Could not fetch image: error decoding response body for url ({url}): operation timed out"
    )


def test_the_fetch_time_is_shared_by_the_request_images(image_server: Any) -> None:
    """Each slow image alone fits in the time; four together (4 x 0.3 s) do not."""
    url = f"{image_server.base_url}/slow-image.png"
    limits = replace(ALLOW, image_fetch_timeout=1.0)
    assert fetch_image(f"![]({url})", limits).data == image_server.png
    with pytest.raises(ImageInputError) as raised:
        split_inputs(f"![]({url})" * 4, limits)
    assert raised.value.detail == (
        f"Could not fetch image: error sending request for url ({url}): operation timed out"
    )
