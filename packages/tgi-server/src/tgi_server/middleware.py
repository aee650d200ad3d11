"""The app's middleware: engine lifespan, CORS, API key, and the JSON body extractor.

In the order Falcon runs them for a request, as TGI's axum layers do:
- ``Cors`` answers preflights itself and adds ``access-control-*`` headers to every
  response (tower-http's ``CorsLayer``: methods GET+POST, header ``content-type``, any
  origin or the ``--cors-allow-origin`` list);
- ``ApiKey`` (after routing, so unknown paths stay 404): with ``--api-key``, the POST routes
  TGI protects need ``Authorization: Bearer <key>``, compared case-insensitively on the
  whole value; anything else is a bare 401;
- ``JsonBody`` (POST routes): axum's ``Json`` extractor checks, in its order: the
  content type (415), then the size against ``--payload-limit`` (413); the body is left in
  ``req.context.body`` for the resource to decode (400/422 come from ``decode_body``).

``EngineLifespan`` handles ASGI lifespan: each worker connects its engine client at
startup (a hello round trip, from the worker's own event loop); at shutdown it stops the
validation pool. The engine client belongs to whoever built the app, who closes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import falcon
import falcon.asgi

from tgi_core.api import UNSUPPORTED_MEDIA_TYPE_MESSAGE
from tgi_server.engine_client import EngineClient
from tgi_server.generation import ValidationWorkers
from tgi_server.http_errors import PAYLOAD_TOO_LARGE_MESSAGE, PlainTextError
from tgi_server.ipc.messages import EngineInfo

__all__ = ["PROTECTED_PATHS", "ApiKey", "Cors", "EngineLifespan", "JsonBody", "request_body"]

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
"""TGI's "base" routes: POST only (``GET /`` is the unprotected health check)."""

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


class ApiKey:
    """``--api-key``: the protected routes need ``Authorization: Bearer <key>``."""

    def __init__(self, api_key: str) -> None:
        self._expected = f"Bearer {api_key}".lower()

    async def process_resource(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        params: dict[str, Any],
    ) -> None:
        if resource is None or req.method != "POST" or req.path not in PROTECTED_PATHS:
            return
        token = req.get_header("Authorization")
        if token is None or token.lower() != self._expected:
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
