"""Paths spelled to slip past the API key: every one is a 404, as from TGI's router.

Falcon routes ``//generate`` and ``/%2Fgenerate`` to ``/generate`` (it drops leading
slashes and decodes the path); axum does neither. Each hostile spelling of each protected
route is tried with and without the key, through the ASGI interface and over a real socket
(uvicorn's own path handling), and the key must guard a route whatever path reaches it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import falcon.testing
import pytest

from tgi_server.middleware import PROTECTED_PATHS, is_canonical_path
from tgi_server.testing import Harness, ServedApp

KEY = "s3cret"
AUTHORIZED = {"Authorization": f"Bearer {KEY}"}


def hostile_spellings(path: str) -> list[str]:
    """The non-canonical paths a lenient router would take for ``path``."""
    rest = path.removeprefix("/")
    spellings = [
        f"/{path}",  # //generate
        f"//{path}",  # ///generate
        f"/%2F{rest}",
        f"/%2f{rest}",
        f"/%5C{rest}",
        f"/./{rest}",
        f"/nope/../{rest}",
        f"/{rest}/",
    ]
    if "/" in rest:
        spellings.append("/" + rest.replace("/", "//"))  # /v1//completions
    if rest:
        spellings.append(f"/%{ord(rest[0]):02X}{rest[1:]}")  # /%67enerate
    return spellings


@pytest.fixture(scope="module")
def keyed(harness: Harness) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(harness.app(api_key=KEY))


@pytest.mark.parametrize("path", sorted(PROTECTED_PATHS))
def test_hostile_spellings_of_protected_routes_are_404_with_or_without_the_key(
    keyed: falcon.testing.TestClient, path: str
) -> None:
    for hostile in hostile_spellings(path):
        for headers in ({}, AUTHORIZED):
            result = keyed.simulate_post(hostile, json={}, headers=headers)
            assert (result.status_code, result.content) == (404, b""), (hostile, headers)
            assert "content-type" not in result.headers
    # The canonical spelling: 401 without the key, past it (the body's 422) with it.
    assert keyed.simulate_post(path, json={}).status_code == 401
    assert keyed.simulate_post(path, json={}, headers=AUTHORIZED).status_code == 422


def test_hostile_spellings_are_404_without_an_api_key_too(harness: Harness) -> None:
    client = falcon.testing.TestClient(harness.app())
    payload = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
    assert client.simulate_post("/generate", json=payload).status_code == 200
    for hostile in hostile_spellings("/generate"):
        assert client.simulate_post(hostile, json=payload).status_code == 404, hostile
    for hostile in ("//health", "/%69nfo", "/./metrics"):
        assert client.simulate_get(hostile).status_code == 404, hostile
    assert client.simulate_get("/health").status_code == 200


def test_the_key_guards_a_resource_whatever_path_reaches_it(harness: Harness) -> None:
    app = harness.app(api_key=KEY)
    generate = app._router.find("/generate")
    assert generate is not None
    app.add_route("/alias", generate[0])
    client = falcon.testing.TestClient(app)
    payload = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
    assert client.simulate_post("/alias", json=payload).status_code == 401
    assert client.simulate_post("/alias", json=payload, headers=AUTHORIZED).status_code == 200


def test_canonical_paths() -> None:
    for path in ("/", "/generate", "/v1/chat/completions", "/api-doc/openapi.json"):
        assert is_canonical_path(path), path
    for path in ("", "//", "generate", "/a//b", "/a/./b", "/a/../b", "/a\\b", "/a%20b", "/a/"):
        assert not is_canonical_path(path), path


# --- over a real socket: uvicorn's own path parsing ----------------------------------------


@pytest.fixture(scope="module")
def keyed_server(harness: Harness) -> Iterator[ServedApp]:
    server = ServedApp(harness.app(api_key=KEY))
    yield server
    server.stop()


def raw_post(port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    """POST with the request line exactly as given (HTTP clients normalize paths)."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    return int(response.split(b" ", 2)[1])


def test_hostile_spellings_over_a_real_socket(keyed_server: ServedApp) -> None:
    body = b'{"inputs":"Hello","parameters":{"max_new_tokens":2}}'
    for path in ("/generate", "/v1/chat/completions"):
        for hostile in hostile_spellings(path):
            assert raw_post(keyed_server.port, hostile, body, {}) == 404, hostile
            assert raw_post(keyed_server.port, hostile, body, AUTHORIZED) == 404, hostile
    assert raw_post(keyed_server.port, "/generate", body, {}) == 401
    assert raw_post(keyed_server.port, "/generate", body, AUTHORIZED) == 200
