"""``app``: the ASGI application of one HTTP worker, built from the environment.

``text-generation-launcher`` runs ``gunicorn -c python:tgi_server.gunicorn_conf
tgi_server.asgi:app`` with its resolved settings encoded in ``TGI_SETTINGS``
(``Settings.child_environ()``), the engine process's socket and the workers' shared metrics
folder among them (prometheus-client also reads the folder from ``PROMETHEUS_MULTIPROC_DIR``).
Each worker builds its own app the first time Gunicorn reads ``app``, after the fork: the
settings (``Settings.from_parent``), the model's tokenizer, a ``ZmqEngineClient`` tagged
with the worker index that Gunicorn's ``post_fork`` hook handed to ``set_worker_index``, the
worker's tracer provider when ``--otlp-endpoint`` is set (``tgi_server.tracing``, flushed at
lifespan shutdown), and ``create_app``.

The same entry serves people who run Gunicorn (or uvicorn) themselves, next to an engine
they started::

    python -m tgi_server.engine --engine-socket /tmp/tgi/engine.sock --model-id ... &
    TGI_ENGINE_SOCKET=/tmp/tgi/engine.sock MODEL_ID=... \\
        gunicorn -c python:tgi_server.gunicorn_conf 'tgi_server.asgi:app'

Give the workers the same model settings as the engine (they validate against the limits).
Nothing here loads a model or serves a request itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import falcon.asgi

from tgi_core.settings import Settings
from tgi_core.tokenization import load_tokenizer
from tgi_server.app import ModelInfo, create_app
from tgi_server.engine_client import ZmqEngineClient
from tgi_server.tracing import TracerCloser, start_tracing
from tgi_vlm.prompt_encoding import prompt_encoder_for

__all__ = ["build_app", "set_worker_index"]

_worker_index: int | None = None


class EngineClientCloser:
    """Closes the worker's engine client at ASGI lifespan shutdown (the app does not own it)."""

    def __init__(self, engine: ZmqEngineClient) -> None:
        self._engine = engine

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        await self._engine.aclose()


def set_worker_index(index: int) -> None:
    """Tag this process's engine client with ``index`` (unique among the engine's workers).

    Gunicorn's ``post_fork`` hook calls it with the worker's age, before the app is built.
    Without it the client uses the process id.
    """
    global _worker_index
    _worker_index = index


def build_app(
    settings: Settings | None = None, *, worker_index: int | None = None
) -> falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]:
    """The ASGI app of one worker, talking to the engine at ``settings.engine_socket``.

    Args:
        settings: the service's settings; the launcher's (or the environment's) when None:
            ``Settings.from_parent(argv=[])``.
        worker_index: the tag of this worker's request ids; the process id when None.

    Raises:
        RuntimeError: no engine socket is configured, or nothing is at its path.
        TokenizerLoadError: the model's tokenizer cannot be loaded.
    """
    if settings is None:
        settings = Settings.from_parent(argv=[])
    server = settings.server()
    if server.engine_socket is None:
        raise RuntimeError(
            "TGI_ENGINE_SOCKET is not set: start an engine with `python -m tgi_server.engine "
            "--engine-socket PATH` and export TGI_ENGINE_SOCKET=PATH for the workers"
        )
    socket = Path(server.engine_socket)
    if not socket.exists():
        raise RuntimeError(f"no engine socket at {socket}: is the engine process running?")
    tokenizer = load_tokenizer(
        settings.model_id,
        revision=settings.revision,
        hf_token=settings.hf_token,
        tokenizer_config_path=settings.tokenizer_config_path,
    )
    engine = ZmqEngineClient(socket, worker_index=worker_index)
    tracer_provider = start_tracing(server)  # one per worker: after the fork
    # The engine's ready message (warmup report, KV capacity) reaches the app when the
    # worker connects, at ASGI startup; the model id is the one given, as TGI reports it.
    app = create_app(
        server,
        engine,
        tokenizer,
        ModelInfo(model_id=settings.model_id),
        metrics_dir=server.metrics_dir,
        prompt_encoder=prompt_encoder_for(settings.model_id, tokenizer, server.images),
        cancel_on_disconnect=True,
        tracer_provider=tracer_provider,
    )
    app.add_middleware(EngineClientCloser(engine))
    if tracer_provider is not None:
        app.add_middleware(TracerCloser(tracer_provider))
    return app


def __getattr__(name: str) -> Any:
    # ``app`` is built on first access, not at import: Gunicorn's post_fork hook imports
    # this module to set the worker index before the worker loads ``app``.
    if name == "app":
        app = build_app(worker_index=_worker_index)
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
