"""``GET /health``, ``GET /ping`` (and ``GET /``): 200 with an empty body, or 503."""

from __future__ import annotations

import falcon.asgi

from tgi_core.errors import UnhealthyError
from tgi_server.engine_client import EngineClient

__all__ = ["Health"]


class Health:
    """TGI's health check: the engine's own (a liveness probe when it last failed)."""

    def __init__(self, engine: EngineClient) -> None:
        self._engine = engine

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if not await self._engine.health():
            raise UnhealthyError()
        resp.data = b""
