"""``GET /info`` (the model and the router's limits) and ``GET /v1/models`` (OpenAI's list)."""

from __future__ import annotations

from collections.abc import Sequence

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
    """``GET /v1/models``: the served model, then each LoRA adapter (a chat's ``model``
    that names one selects it); ``owned_by`` the model id, ``created`` 0."""

    def __init__(self, model_id: str, adapter_ids: Sequence[str] = ()) -> None:
        entries = [ModelInfo(id=name, owned_by=model_id) for name in (model_id, *adapter_ids)]
        self._body = encode_json(ModelsList(data=entries))

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body
