"""``GET /info`` (the model and the router's limits) and ``GET /v1/models`` (OpenAI's list)."""

from __future__ import annotations

import falcon
import falcon.asgi
import msgspec

from tgi_core.api import Info, ModelInfo, ModelsList, encode_json
from tgi_server.ipc.messages import EngineInfo

__all__ = ["InfoResource", "Models"]


class InfoResource:
    """``GET /info``: the ``Info`` built by the app, completed with the engine's dtype,
    device, compute path and warmup time when the worker connects to it."""

    def __init__(self, info: Info) -> None:
        self._info = info
        self._body = encode_json(info)

    def adopt(self, engine: EngineInfo) -> None:
        """Fill the engine's fields (those the app left unset) from its ready message."""
        info = self._info
        seconds = info.warmup_seconds
        if seconds is None and engine.warmup is not None:
            seconds = round(engine.warmup.seconds, 3)
        self._info = msgspec.structs.replace(
            info,
            model_dtype=info.model_dtype or engine.model_dtype or None,
            model_device_type=info.model_device_type or engine.model_device_type or None,
            compute_path=info.compute_path or engine.compute_path or None,
            warmup_seconds=seconds,
        )
        self._body = encode_json(self._info)

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
