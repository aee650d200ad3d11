"""The app's middleware: engine lifespan, paths, CORS, API key, and the JSON body extractor.

In the order Falcon runs them for a request, as TGI's axum layers do:
- ``CanonicalPath`` answers 404 (as for any unknown route) to a path that is not spelled
  exactly as a route is: empty segments (``//generate``), dot segments, backslashes or
  percent escapes (``/%2Fgenerate``). Falcon's router drops leading slashes and routes on
  the decoded path; axum matches the raw path, so TGI answers 404 to all of these;
- ``Cors`` answers preflights itself and adds ``access-control-*`` headers to every
  response (tower-http's ``CorsLayer``: methods GET+POST, header ``content-type``, any
  origin or the ``--cors-allow-origin`` list);
- ``ApiKey`` (after routing, so unknown paths stay 404): with ``--api-key``, POST to the
  resources of the routes TGI protects needs ``Authorization: Bearer <key>``, compared
  case-insensitively on the whole value (in constant time); anything else is a bare 401.
  Protection follows the matched resource, not the path's spelling, so no alias of a
  protected route escapes it;
- ``JsonBody`` (POST routes): axum's ``Json`` extractor checks, in its order: the
  content type (415), then the size against ``--payload-limit`` (413); the body is left in
  ``req.context.body`` for the resource to decode (400/422 come from ``decode_body``).

``EngineLifespan`` handles ASGI lifespan: each worker connects its engine client at
startup (a hello round trip, from the worker's own event loop); at shutdown it stops the
validation pool. The engine client belongs to whoever built the app, who closes it.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable
from typing import Any

import falcon
import falcon.asgi

from tgi_core.api import UNSUPPORTED_MEDIA_TYPE_MESSAGE
from tgi_server.engine_client import EngineClient
from tgi_server.http_errors import PAYLOAD_TOO_LARGE_MESSAGE, PlainTextError
from tgi_server.ipc.messages import EngineInfo
from tgi_server.validation_pool import ValidationWorkers

__all__ = [
    "PROTECTED_PATHS",
    "ApiKey",
    "CanonicalPath",
    "Cors",
    "EngineLifespan",
    "JsonBody",
    "is_canonical_path",
    "request_body",
]

logger = logging.getLogger(__name__)

PROTECTED_PATHS = frozenset(
    {
        "/",
        "/generate",
        "/generate_stream",
        "/v1/chat/completions",
        "/v1/completions",
        "/vertex",
        "/invocations",
        "/tokenize",
    }
)
"""TGI's "base" routes, whose resources ``ApiKey`` guards: POST only (``GET /`` is the
unprotected health check)."""

_VARY = "origin, access-control-request-method, access-control-request-headers"


class EngineLifespan:
    """Connects the worker's engine client at startup; stops the validation pool at shutdown.

    The client is not closed at shutdown: the app does not own it (Falcon's ``TestClient``,
    for one, runs a lifespan around every request on the same client).

    Args:
        engine: the worker's engine client.
        workers: the validation pool.
        on_connected: called with the engine's ``EngineInfo`` once connected.
    """

    def __init__(
        self,
        engine: EngineClient,
        workers: ValidationWorkers,
        on_connected: Callable[[EngineInfo], None] | None = None,
    ) -> None:
        self._engine = engine
        self._workers = workers
        self._on_connected = on_connected

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        info = await self._engine.info()
        if self._on_connected is not None:
            self._on_connected(info)
        logger.info(
            "connected to the engine serving %s (pid %d, %d KV blocks)",
            info.model_id,
            info.pid,
            info.num_kv_blocks,
        )

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        self._workers.shutdown()


class Cors:
    """CORS as TGI's tower-http layer does it (see the module docstring).

    Args:
        allow_origins: allowed origins; empty: any origin (``*``).
    """

    def __init__(self, allow_origins: tuple[str, ...]) -> None:
        self._origins = frozenset(allow_origins)

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        is_preflight = req.method == "OPTIONS" and req.get_header("Access-Control-Request-Method")
        if is_preflight:
            resp.status = falcon.HTTP_200
            resp.set_header("Access-Control-Allow-Methods", "GET,POST")
            resp.set_header("Access-Control-Allow-Headers", "content-type")
            resp.data = b""
            resp.complete = True

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        origin = req.get_header("Origin")
        if not self._origins:
            resp.set_header("Access-Control-Allow-Origin", "*")
        elif origin is not None and origin in self._origins:
            resp.set_header("Access-Control-Allow-Origin", origin)
        resp.set_header("Vary", _VARY)


class CanonicalPath:
    """404 for a path that is not spelled as a route is (see ``is_canonical_path``)."""

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        raw_path = req.scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else req.scope.get("path", "/")
        if not is_canonical_path(path):
            raise falcon.HTTPNotFound()


def is_canonical_path(path: str) -> bool:
    """Whether ``path`` (the raw request path) is a plain ``/a/b`` path: no empty, ``.`` or
    ``..`` segment, no backslash, no percent escape (every route is plain ASCII)."""
    if path == "/":
        return True
    if not path.startswith("/") or "%" in path or "\\" in path:
        return False
    return all(segment not in ("", ".", "..") for segment in path[1:].split("/"))


class ApiKey:
    """``--api-key``: POST to a protected resource needs ``Authorization: Bearer <key>``.

    TGI compares the whole header value with ``Bearer <key>``, both lowercased; so do we,
    with ``hmac.compare_digest`` so the time taken does not reveal how much matched.

    Args:
        api_key: the key.
        protected: the resources of the protected routes (whatever paths lead to them).
    """

    def __init__(self, api_key: str, protected: Iterable[object]) -> None:
        self._expected = f"Bearer {api_key}".lower().encode()
        self._protected = tuple(protected)

    async def process_resource(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        params: dict[str, Any],
    ) -> None:
        if req.method != "POST" or not any(resource is guarded for guarded in self._protected):
            return
        token = req.get_header("Authorization")
        if token is None or not hmac.compare_digest(token.lower().encode(), self._expected):
            raise falcon.HTTPUnauthorized()


class JsonBody:
    """axum's ``Json`` extractor checks for POST routes: 415, then 413 over ``payload_limit``."""

    def __init__(self, payload_limit: int) -> None:
        self._limit = payload_limit

    async def process_resource(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        params: dict[str, Any],
    ) -> None:
        if resource is None or req.method != "POST" or not hasattr(resource, "on_post"):
            return  # unknown path or method: the router answers 404/405
        if not _is_json(req.content_type):
            raise PlainTextError(415, UNSUPPORTED_MEDIA_TYPE_MESSAGE)
        length = req.content_length
        if length is not None and length > self._limit:
            raise PlainTextError(413, PAYLOAD_TOO_LARGE_MESSAGE)
        body = await req.stream.read(self._limit + 1)
        if len(body) > self._limit:
            raise PlainTextError(413, PAYLOAD_TOO_LARGE_MESSAGE)
        req.context.body = body


def request_body(req: falcon.asgi.Request) -> bytes:
    """The body ``JsonBody`` read for this request."""
    body: bytes = req.context.body
    return body


def _is_json(content_type: str | None) -> bool:
    """axum's test: ``application/json`` or ``application/<anything>+json``."""
    if content_type is None:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = mime.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))
