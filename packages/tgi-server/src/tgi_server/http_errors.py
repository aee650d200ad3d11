"""The one table that turns exceptions into TGI's HTTP error responses.

- ``TGIError`` (``tgi_core.errors``): its status and ``{"error", "error_type"}`` JSON body;
  counted in ``tgi_request_failure{err}`` when the request was counted (``count_request``);
- ``BodyError`` (``tgi_core.api``): axum's plain-text body rejections (400, 422);
- ``PlainTextError``: the other plain-text rejections of axum's JSON extractor (413, 415);
- ``ClientDisconnectedError`` (``tgi_server.streaming``): the client is gone, nobody reads
  the answer; counted as ``tgi_request_failure{err="dropped"}``, as a dropped stream is;
- any ``falcon.HTTPError`` (401 from the API key check, 404 unknown route, 405 wrong
  method, and Falcon's 500 for an unexpected exception): the status with an empty body, as
  axum answers them.

Errors inside an SSE stream never get here: the routes send them as stream events.
"""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi

from tgi_core.api import BodyError
from tgi_core.errors import TGIError
from tgi_server.metrics import ServerMetrics
from tgi_server.streaming import ClientDisconnectedError

__all__ = [
    "PAYLOAD_TOO_LARGE_MESSAGE",
    "PlainTextError",
    "count_request",
    "register_error_handlers",
]

PAYLOAD_TOO_LARGE_MESSAGE = "Failed to buffer the request body: length limit exceeded"
_TEXT = "text/plain; charset=utf-8"
# nginx's "client closed request": never seen by the client, which is gone.
_CLIENT_CLOSED_REQUEST = 499


class PlainTextError(Exception):
    """A request rejected with a plain-text body (axum's 413 and 415 texts)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def count_request(req: falcon.asgi.Request, metrics: ServerMetrics) -> None:
    """Count ``req`` in ``tgi_request_count``; its failure, if any, is counted too."""
    metrics.request_count.inc()
    req.context.counted = True


def register_error_handlers(app: falcon.asgi.App[Any, Any], metrics: ServerMetrics) -> None:
    """Install the handlers of this module's table on ``app``."""

    async def on_tgi_error(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: TGIError, params: Any
    ) -> None:
        if req.context.get("counted", False):
            metrics.record_failure(ex.metric_label)
        resp.status = ex.status
        resp.content_type = falcon.MEDIA_JSON
        resp.data = ex.to_json()

    async def on_body_error(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: BodyError, params: Any
    ) -> None:
        _plain_text(resp, ex.status, ex.message)

    async def on_plain_text_error(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: PlainTextError, params: Any
    ) -> None:
        _plain_text(resp, ex.status, ex.message)

    async def on_client_disconnected(
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        ex: ClientDisconnectedError,
        params: Any,
    ) -> None:
        if req.context.get("counted", False):
            metrics.record_failure("dropped")
        resp.status = _CLIENT_CLOSED_REQUEST
        resp.data = b""

    async def on_http_error(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: falcon.HTTPError, params: Any
    ) -> None:
        resp.status = ex.status
        if ex.headers:
            resp.set_headers(ex.headers)
        resp.data = b""

    app.add_error_handler(TGIError, on_tgi_error)
    app.add_error_handler(BodyError, on_body_error)
    app.add_error_handler(PlainTextError, on_plain_text_error)
    app.add_error_handler(falcon.HTTPError, on_http_error)
    app.add_error_handler(ClientDisconnectedError, on_client_disconnected)


def _plain_text(resp: falcon.asgi.Response, status: int, message: str) -> None:
    resp.status = status
    resp.content_type = _TEXT
    resp.data = message.encode()
