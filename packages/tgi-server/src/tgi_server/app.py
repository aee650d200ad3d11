"""``create_app``: the Falcon ASGI application that serves TGI's HTTP API in one worker.

It wires the pieces, nothing more: the validation pool and the request ``Pipeline``
(``generation``), the metrics (``metrics``), the error table (``http_errors``), the
middleware (``middleware``) and one resource per route (``resources``). Each Gunicorn
worker builds its own app, with its own engine client; ``tgi_server.asgi``-style entry
points call ``create_app`` with what the launcher prepared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import falcon.asgi
from opentelemetry.trace import TracerProvider

from tgi_core.api import Info, encode_json
from tgi_core.contract import WarmupReport
from tgi_core.settings.slices import ServerSettings, ValidationLimits
from tgi_core.tokenization import TokenIdsTokenizer, TokenizerLike, VocabularyError, token_bytes
from tgi_core.validation.generate import TextEncoder
from tgi_server.__about__ import __version__
from tgi_server.admission import Permits
from tgi_server.engine_client import EngineClient
from tgi_server.generation import Pipeline
from tgi_server.http_errors import register_error_handlers
from tgi_server.ipc.messages import EngineInfo
from tgi_server.metrics import ServerMetrics
from tgi_server.middleware import (
    PROTECTED_PATHS,
    ApiKey,
    CanonicalPath,
    Cors,
    EngineLifespan,
    JsonBody,
)
from tgi_server.openapi import build_openapi
from tgi_server.request_log import RequestObserver
from tgi_server.resources import Served
from tgi_server.resources.chat import ChatCompletions
from tgi_server.resources.completions import Completions
from tgi_server.resources.docs import (
    ASSETS_PATH,
    OPENAPI_PATH,
    OpenApiDocument,
    SwaggerAssets,
    SwaggerUi,
)
from tgi_server.resources.generate import CompatGenerate, Generate, GenerateStream
from tgi_server.resources.health import Health
from tgi_server.resources.info import InfoResource, Models
from tgi_server.resources.invocations import Invocations
from tgi_server.resources.metrics import MetricsResource
from tgi_server.resources.tokenize import ChatTokenize, Tokenize
from tgi_server.resources.vertex import Vertex
from tgi_server.streaming import App
from tgi_server.validation_pool import ValidationWorkers

__all__ = ["ModelInfo", "create_app"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    """What the API reports about the served model beyond the settings.

    ``model_pipeline_tag`` None (a local model) or ``"text-generation"`` makes ``POST /``
    return the full text by default, as in TGI. ``warmup`` feeds the warmup metrics (when
    None, the engine's report is taken when the worker connects to it).
    ``model_dtype``, ``model_device_type`` and ``max_supported_total_tokens`` describe the
    engine (TGI's shard info; logged, not part of ``/info``).
    """

    model_id: str
    model_sha: str | None = None
    model_pipeline_tag: str | None = None
    docker_label: str | None = None
    model_dtype: str = ""
    model_device_type: str = ""
    max_supported_total_tokens: int | None = None
    warmup: WarmupReport | None = None

    @classmethod
    def from_engine_info(cls, info: EngineInfo, *, model_id: str | None = None) -> ModelInfo:
        """From the engine's ready message (``model_id`` overrides the engine's, e.g. to
        report the ``--model-id`` given rather than the resolved path)."""
        return cls(
            model_id=info.model_id if model_id is None else model_id,
            model_dtype=info.model_dtype,
            model_device_type=info.model_device_type,
            max_supported_total_tokens=info.max_supported_total_tokens,
            warmup=info.warmup,
        )


def create_app(
    settings: ServerSettings,
    engine: EngineClient,
    tokenizer: TokenizerLike,
    model_info: ModelInfo,
    *,
    metrics_dir: str | None = None,
    prompt_encoder: TextEncoder | None = None,
    cancel_on_disconnect: bool = False,
    tracer_provider: TracerProvider | None = None,
) -> falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]:
    """The ASGI app of one HTTP worker.

    Args:
        settings: the server's settings slice (limits, API key, CORS, payload limit, ...).
        engine: this worker's engine client; the app connects it at ASGI lifespan startup
            (closing it is the caller's business).
        tokenizer: the model's tokenizer; with ``skip_tokenizer_in_tgi`` it is wrapped in a
            ``TokenIdsTokenizer`` (inputs are token ids, ids come back as text).
        model_info: what ``/info``, ``/v1/models`` and the OpenAI routes report.
        metrics_dir: prometheus-client's multiprocess directory when several workers
            serve (see ``tgi_server.metrics``); None for one process.
        prompt_encoder: a VLM's prompt encoder (``tgi_vlm``): prompts' markdown images
            become placeholder tokens and images sent to the engine.
        cancel_on_disconnect: stop a non-streamed generation when its client leaves (the
            served app does; Falcon's ``TestClient`` cannot drive it, see ``App``).
        tracer_provider: where the generating requests' spans go (``tgi_server.tracing``);
            None: no traces (each request still gets its log line and request id).

    Raises:
        ValueError: ``metrics_dir`` is given but prometheus-client is not in
            multiprocess mode.
    """
    if settings.skip_tokenizer_in_tgi and not tokenizer.is_transparent:
        tokenizer = TokenIdsTokenizer.wrapping(tokenizer)
    metrics = ServerMetrics(settings.limits, multiprocess_dir=metrics_dir)
    workers = ValidationWorkers(settings.validation_workers)
    limits = _grammar_limits(settings.limits, tokenizer)
    permits = Permits(settings.max_concurrent_requests)
    pipeline = Pipeline(
        engine, tokenizer, limits, metrics, workers, permits=permits, encoder=prompt_encoder
    )
    served = Served(
        model_id=model_info.model_id,
        compute_type=settings.compute_type,
        system_fingerprint=f"{__version__}-{model_info.docker_label or 'native'}",
        default_return_full_text=model_info.model_pipeline_tag in (None, "text-generation"),
    )
    metrics_resource = MetricsResource(engine, metrics, model_info.warmup)
    info_resource = InfoResource(_info(settings, model_info))
    health = Health(engine)
    compat = CompatGenerate(pipeline, served, health)
    chat = ChatCompletions(pipeline, served)
    completions = Completions(pipeline, served)
    routes: dict[str, object] = {
        "/": compat,
        "/generate": Generate(pipeline, served),
        "/generate_stream": GenerateStream(pipeline, served),
        "/v1/chat/completions": chat,
        "/v1/completions": completions,
        "/vertex": Vertex(pipeline),
        "/invocations": Invocations(compat, chat, completions),
        "/tokenize": Tokenize(pipeline),
        "/chat_tokenize": ChatTokenize(pipeline),
        "/health": health,
        "/ping": health,
        "/info": info_resource,
        "/v1/models": Models(model_info.model_id, settings.limits.adapter_ids),
        "/metrics": metrics_resource,
        "/docs": SwaggerUi(),
        ASSETS_PATH: SwaggerAssets(),
        OPENAPI_PATH: OpenApiDocument(encode_json(build_openapi(__version__))),
    }

    middleware: list[Any] = [CanonicalPath(), Cors(settings.cors_allow_origin)]
    if settings.api_key:
        middleware.append(ApiKey(settings.api_key, [routes[path] for path in PROTECTED_PATHS]))

    def on_connected(info: EngineInfo) -> None:
        metrics_resource.adopt(info)
        info_resource.adopt(info)

    lifespan = EngineLifespan(engine, workers, on_connected=on_connected)
    tracer = None if tracer_provider is None else tracer_provider.get_tracer("tgi_server")
    middleware += [JsonBody(settings.payload_limit), RequestObserver(tracer), lifespan]
    # Every response sets its own type; empty ones (health, 401/404/405) get none, as from
    # axum. Falcon types media_type as str but skips the header when it is None.
    app = App(middleware=middleware, media_type=None, cancel_on_disconnect=cancel_on_disconnect)
    register_error_handlers(app, metrics)
    for path, resource in routes.items():
        app.add_route(path, resource)
    return app


def _info(settings: ServerSettings, model_info: ModelInfo) -> Info:
    limits = settings.limits
    return Info(
        model_id=model_info.model_id,
        model_sha=model_info.model_sha,
        model_pipeline_tag=model_info.model_pipeline_tag,
        max_concurrent_requests=settings.max_concurrent_requests,
        max_best_of=limits.max_best_of,
        max_stop_sequences=limits.max_stop_sequences,
        max_input_tokens=limits.max_input_tokens,
        max_total_tokens=limits.max_total_tokens,
        validation_workers=settings.validation_workers,
        max_client_batch_size=limits.max_client_batch_size,
        version=__version__,
        docker_label=model_info.docker_label,
        lora_adapters=list(limits.adapter_ids),
    )


def _grammar_limits(limits: ValidationLimits, tokenizer: TokenizerLike) -> ValidationLimits:
    """The limits, with grammars refused when ``tokenizer`` cannot spell each token's bytes.

    The engine's grammar masks need those bytes (``token_bytes``); without them (token-id
    inputs under SKIP_TOKENIZER_IN_TGI, a decoder we cannot read) a grammar is refused here
    with TGI's ``--disable-grammar-support`` message instead of failing the engine's batch.
    """
    if limits.disable_grammar_support:
        return limits
    try:
        token_bytes(tokenizer)
    except VocabularyError as error:
        logger.warning("grammars are refused: %s", error)
        return replace(limits, disable_grammar_support=True)
    return limits
