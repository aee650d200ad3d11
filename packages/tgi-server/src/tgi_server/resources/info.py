"""``GET /info`` (the model and the router's limits) and ``GET /v1/models`` (OpenAI's list)."""

from __future__ import annotations

import falcon
import falcon.asgi

from tgi_core.api import Info, ModelInfo, ModelsList, encode_json

__all__ = ["InfoResource", "Models"]


class InfoResource:
    """``GET /info``: the ``Info`` built once by the app."""

    def __init__(self, info: Info) -> None:
        self._body = encode_json(info)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body


class Models:
    """``GET /v1/models``: one entry, the served model (``owned_by`` its id, ``created`` 0)."""

    def __init__(self, model_id: str) -> None:
        entry = ModelInfo(id=model_id, owned_by=model_id)
        self._body = encode_json(ModelsList(data=[entry]))

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body
