"""``POST /invocations`` (Amazon SageMaker): one route for the three request shapes.

TGI's untagged order: a body with ``inputs`` is ``POST /`` (generate, maybe streamed),
else one with ``messages`` is a chat completion, else a legacy completion; each is then
answered exactly as its own route answers it.
"""

from __future__ import annotations

import falcon.asgi

from tgi_core.api import ChatRequest, CompatGenerateRequest, decode_invocations
from tgi_server.middleware import request_body
from tgi_server.resources.chat import ChatCompletions
from tgi_server.resources.completions import Completions
from tgi_server.resources.generate import CompatGenerate
from tgi_server.streaming import cancel_on_disconnect

__all__ = ["Invocations"]


class Invocations:
    """``POST /invocations``, delegating to the route of the body's shape."""

    def __init__(
        self, compat: CompatGenerate, chat: ChatCompletions, completions: Completions
    ) -> None:
        self._compat = compat
        self._chat = chat
        self._completions = completions

    @cancel_on_disconnect
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request = decode_invocations(request_body(req))
        if isinstance(request, CompatGenerateRequest):
            await self._compat.respond(req, resp, request)
        elif isinstance(request, ChatRequest):
            await self._chat.respond(req, resp, request)
        else:
            await self._completions.respond(req, resp, request)
