"""``GET /metrics``: every worker's request metrics and the engine's state, Prometheus text."""

from __future__ import annotations

import asyncio
import logging

import falcon.asgi

from tgi_core.contract import WarmupReport
from tgi_server.engine_client import EngineClient
from tgi_server.ipc.messages import EngineInfo, EngineStatus
from tgi_server.metrics import CONTENT_TYPE, ServerMetrics

__all__ = ["MetricsResource"]

logger = logging.getLogger(__name__)

# A scrape must not hang on a busy or dead engine: without its snapshot, the request
# metrics are still served.
STATS_TIMEOUT_S = 5.0


class MetricsResource:
    """``GET /metrics``; the engine is asked for its stats at each scrape.

    ``warmup`` (the warmup metrics) may also arrive later, from ``adopt``.
    """

    def __init__(
        self, engine: EngineClient, metrics: ServerMetrics, warmup: WarmupReport | None
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._warmup = warmup

    def adopt(self, info: EngineInfo) -> None:
        """Take the warmup report from the engine's info, unless one was given."""
        if self._warmup is None:
            self._warmup = info.warmup

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        status: EngineStatus | None
        try:
            status = await asyncio.wait_for(self._engine.stats(), STATS_TIMEOUT_S)
        # asyncio.TimeoutError is not the builtin TimeoutError before Python 3.11.
        except (asyncio.TimeoutError, TimeoutError, RuntimeError, TypeError) as exc:
            logger.warning("no engine stats for /metrics: %s", exc or type(exc).__name__)
            status = None
        resp.content_type = CONTENT_TYPE
        resp.data = self._metrics.render(status, self._warmup)
