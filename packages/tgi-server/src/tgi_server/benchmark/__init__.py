"""Load generator for TGI-compatible servers (``tgi-benchmark``), importable without torch.

``profiles`` builds seeded workloads, ``client`` streams one request over SSE, ``runner`` shapes
the load (concurrency or Poisson rate, bounded by count and time, 127.0.0.1 only), ``report``
reduces timings to percentiles and tables, ``cli`` is the command. Starting servers (peers for a
comparison) is ``benchmarks/compare.py``'s job, outside the package.
"""

from __future__ import annotations

from tgi_server.benchmark.cli import run_sweep
from tgi_server.benchmark.client import Api, RequestRecord, SSEDecoder, stream_request
from tgi_server.benchmark.profiles import BenchRequest, make_requests
from tgi_server.benchmark.report import Summary, format_table, summarize
from tgi_server.benchmark.runner import LoadSpec, RunResult, check_local_url, run_load

__all__ = [
    "Api",
    "BenchRequest",
    "LoadSpec",
    "RequestRecord",
    "RunResult",
    "SSEDecoder",
    "Summary",
    "check_local_url",
    "format_table",
    "make_requests",
    "run_load",
    "run_sweep",
    "stream_request",
    "summarize",
]
