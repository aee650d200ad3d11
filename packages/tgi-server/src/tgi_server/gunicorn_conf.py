"""Gunicorn configuration of the HTTP service: ``gunicorn -c python:tgi_server.gunicorn_conf``.

Every value comes from the settings (``Settings.from_parent(argv=[])``): the launcher hands
Gunicorn its resolved settings encoded in ``TGI_SETTINGS``, and someone running Gunicorn by
hand sets the settings' own variables instead (``PORT``, ``HOSTNAME``, ``WORKERS``,
``GRACEFUL_TERMINATION_TIMEOUT``, ``LOG_LEVEL``, ``JSON_OUTPUT``, ``TGI_ENGINE_SOCKET``...).
The app is ``tgi_server.asgi:app`` unless the command line names another.

Workers are uvicorn's, bounded by ``limit_concurrency`` (``http_concurrency_limit``): past
it uvicorn answers 503 without calling the app, so a flood of connections cannot make a
worker hold unbounded requests.

Two hooks: ``post_fork`` gives each worker its index (Gunicorn's worker age, unique for the
master's lifetime) for the request ids it sends the engine, before the worker builds its
app; ``child_exit`` tells prometheus-client's multiprocess mode that a worker is gone.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn_worker import UvicornWorker

from tgi_core.settings import Settings
from tgi_server.logging_setup import logging_config, python_level

_settings = Settings.from_parent(argv=[]).server()
# Connections and requests of one worker beyond the generating ones it admits: health
# checks, metrics scrapes, idle keep-alive connections, requests being answered 429.
_HTTP_MARGIN = 64


def http_concurrency_limit(max_concurrent_requests: int) -> int:
    """uvicorn's ``limit_concurrency`` for one worker: the connections (idle keep-alive ones
    included) and requests it serves at once before it answers 503.

    A worker admits at most ``max_concurrent_requests`` generations (the rest get 429,
    ``tgi_server.admission``); as many again, plus a margin, leaves room for the requests
    that are not generations and for clients that keep connections open.
    """
    return 2 * max_concurrent_requests + _HTTP_MARGIN


class BoundedUvicornWorker(UvicornWorker):  # type: ignore[misc]  # untyped
    """uvicorn's Gunicorn worker with ``limit_concurrency`` from the settings."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 (uvicorn-worker's own annotation)
        **UvicornWorker.CONFIG_KWARGS,
        "limit_concurrency": http_concurrency_limit(_settings.max_concurrent_requests),
    }


def _bind_address(hostname: str, port: int) -> str:
    return f"[{hostname}]:{port}" if ":" in hostname else f"{hostname}:{port}"


wsgi_app = "tgi_server.asgi:app"
worker_class = BoundedUvicornWorker
workers = _settings.workers
bind = [_bind_address(_settings.hostname, _settings.port)]
# On SIGTERM, workers get this long to finish the requests in flight, then are killed.
graceful_timeout = _settings.graceful_termination_timeout
# A uvicorn worker beats from its event loop, so long generations never look silent; only
# a loop blocked this long (a hung worker) is killed and replaced.
timeout = 120
# Longer than common load-balancer idle timeouts (60 s): the balancer, not the server,
# closes idle connections, so clients never reuse one the server is closing.
keepalive = 75
accesslog = None  # TGI logs no access lines
loglevel = logging.getLevelName(python_level(_settings.log_level)).lower()
logconfig_dict = logging_config(_settings.log_level, json_output=_settings.json_output)
# Gunicorn's default control socket is one path per user: two services would collide.
control_socket_disable = True
proc_name = "text-generation-server"


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker, before its app is built: tag its engine client."""
    from tgi_server import asgi

    asgi.set_worker_index(worker.age)


def child_exit(server: Any, worker: Any) -> None:
    """In the master, when a worker exits: drop its live values from the metrics folder."""
    if _settings.metrics_dir is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, _settings.metrics_dir)  # type: ignore[no-untyped-call]
