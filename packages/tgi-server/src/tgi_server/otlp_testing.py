"""``OtlpReceiver``: an OTLP/HTTP traces collector on 127.0.0.1, for the tracing tests.

It accepts ``POST /v1/traces`` (protobuf, as the OTLP/HTTP exporter sends), decodes each
body with opentelemetry-proto's ``ExportTraceServiceRequest`` and answers 200 with an empty
``ExportTraceServiceResponse``, as a collector does. ``spans`` flattens what arrived.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = ["OtlpReceiver"]


class OtlpReceiver:
    """A collector on a free port of 127.0.0.1 (``endpoint``), serving on a thread until
    ``stop``."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.paths.append(self.path)
                receiver.requests.append(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no access lines in the tests' output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def spans(self) -> list[tuple[str, Span]]:
        """Every span received, with its resource's ``service.name``."""
        found: list[tuple[str, Span]] = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        attribute.value.string_value
                        for attribute in resource_spans.resource.attributes
                        if attribute.key == "service.name"
                    ),
                    "",
                )
                for scope_spans in resource_spans.scope_spans:
                    found.extend((service, span) for span in scope_spans.spans)
        return found

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
