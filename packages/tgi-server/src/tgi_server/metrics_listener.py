"""The ``--prometheus-port`` listener: TGI's second HTTP server, for Prometheus alone.

TGI (after 3.2.3) serves its metrics on ``--prometheus-port`` (default 9000) as well as on
``GET /metrics`` of the API port, so that a scraper can reach them where the API is not
exposed. The launcher runs this listener on a thread. It renders nothing itself: each scrape
is forwarded to the webserver's ``/metrics``, which merges the Gunicorn workers' counters
with the engine's gauges, so both ports always answer the same text. Like TGI's exporter it
answers a GET on any path. Until the webserver is up (or if it is gone) it answers 503.
"""

from __future__ import annotations

import http.client
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["MetricsListener"]

logger = logging.getLogger(__name__)

_UPSTREAM_TIMEOUT_S = 10.0


class MetricsListener:
    """Binds ``hostname:port`` at once (a busy port fails here), serves after ``start``.

    Args:
        hostname, port: where Prometheus scrapes (``--hostname``, ``--prometheus-port``).
        upstream_host, upstream_port: where the webserver's ``/metrics`` is reached.

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, hostname: str, port: int, upstream_host: str, upstream_port: int) -> None:
        handler = _handler_for(upstream_host, upstream_port)
        self._server = ThreadingHTTPServer((hostname, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="prometheus-listener", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        port: int = self._server.server_address[1]
        return port

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stops serving (if it was started) and frees the port."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


def _handler_for(upstream_host: str, upstream_port: int) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, content_type, body = _scrape(upstream_host, upstream_port)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("prometheus listener: " + format, *args)

    return MetricsHandler


def _scrape(host: str, port: int) -> tuple[int, str, bytes]:
    """(status, content type, body) of the webserver's ``GET /metrics``."""
    connection = http.client.HTTPConnection(host, port, timeout=_UPSTREAM_TIMEOUT_S)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        content_type = response.getheader("Content-Type", "text/plain; charset=utf-8")
        return response.status, content_type, response.read()
    except OSError as error:
        return 503, "text/plain; charset=utf-8", f"metrics unavailable: {error}\n".encode()
    finally:
        connection.close()
