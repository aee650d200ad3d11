"""Statistics of a load run and their presentation: percentiles, a table, JSON, a plot.

Latencies: TTFT from request start to the first non-empty token event; ITL (inter-token
latency) between consecutive non-empty token events of one request, pooled over requests;
end-to-end from request start to the end of the stream. Throughput counts finished, error-free
requests over the run's wall time. Percentiles interpolate linearly between order statistics
(numpy's default). matplotlib is imported only when a plot is asked for. Nothing here sends
requests (``runner.py``) or parses the wire (``client.py``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tgi_server.benchmark.client import RequestRecord
from tgi_server.benchmark.runner import RunResult

QUANTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError("q must be within [0, 100]")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def inter_token_latencies(token_times: Sequence[float]) -> list[float]:
    """Gaps between consecutive token events of one request."""
    return [later - earlier for earlier, later in itertools.pairwise(token_times)]


@dataclass(frozen=True)
class Distribution:
    """Mean and p50/p90/p99 of a latency, in seconds (NaN when nothing was measured)."""

    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        mean = sum(values) / len(values) if values else math.nan
        return cls(mean, *(percentile(values, q) for q in QUANTILES))


@dataclass(frozen=True)
class Summary:
    """One load run, reduced to the figures a comparison needs."""

    label: str
    concurrency: int | None
    request_rate: float | None
    num_sent: int
    num_ok: int
    num_errors: int
    num_cancelled: int
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    mean_input_tokens: float | None
    mean_output_tokens: float
    ttft: Distribution
    itl: Distribution
    e2e: Distribution
    first_error: str | None

    def to_json(self) -> dict[str, Any]:
        return {key: _finite(value) for key, value in asdict(self).items()}


def _finite(value: Any) -> Any:
    """JSON has no NaN: missing figures become null."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize(result: RunResult, label: str = "") -> Summary:
    """Reduces ``result``; only error-free requests that produced tokens enter the figures."""
    ok = [record for record in result.records if record.ok]
    errors = [record for record in result.records if not record.ok]
    duration = result.duration_s
    output_tokens = sum(record.num_output_tokens for record in ok)
    input_counts = [r.num_input_tokens for r in ok if r.num_input_tokens is not None]
    return Summary(
        label=label,
        concurrency=result.spec.concurrency,
        request_rate=result.spec.request_rate,
        num_sent=result.num_sent,
        num_ok=len(ok),
        num_errors=len(errors),
        num_cancelled=result.num_cancelled,
        duration_s=duration,
        requests_per_s=len(ok) / duration if duration > 0 else math.nan,
        output_tokens_per_s=output_tokens / duration if duration > 0 else math.nan,
        mean_input_tokens=sum(input_counts) / len(input_counts) if input_counts else None,
        mean_output_tokens=output_tokens / len(ok) if ok else math.nan,
        ttft=Distribution.of([r.token_times[0] - r.start for r in ok if r.token_times]),
        itl=Distribution.of([gap for r in ok for gap in inter_token_latencies(r.token_times)]),
        e2e=Distribution.of([r.end - r.start for r in ok]),
        first_error=_first_error(errors),
    )


def _first_error(errors: Sequence[RequestRecord]) -> str | None:
    for record in errors:
        return record.error or "no tokens generated"
    return None


_HEADERS = (
    "run", "load", "ok/sent", "req/s", "out tok/s", "in tok", "out tok",
    "TTFT p50/p90/p99 ms", "ITL p50/p90/p99 ms", "E2E p50/p90/p99 s",
)  # fmt: skip


def _triple(distribution: Distribution, scale: float, digits: int) -> str:
    values = (distribution.p50, distribution.p90, distribution.p99)
    return "/".join("-" if math.isnan(v) else f"{v * scale:.{digits}f}" for v in values)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _row(summary: Summary) -> list[str]:
    load = (
        f"c={summary.concurrency}"
        if summary.concurrency is not None
        else f"{summary.request_rate:g} req/s"
    )
    return [
        summary.label,
        load,
        f"{summary.num_ok}/{summary.num_sent}",
        _number(summary.requests_per_s, 2),
        _number(summary.output_tokens_per_s, 1),
        _number(summary.mean_input_tokens, 0),
        _number(summary.mean_output_tokens, 1),
        _triple(summary.ttft, 1000, 0),
        _triple(summary.itl, 1000, 1),
        _triple(summary.e2e, 1, 2),
    ]


def format_table(summaries: Sequence[Summary], *, markdown: bool = False) -> str:
    """An aligned text table (or a Markdown one) with one row per run."""
    rows = [list(_HEADERS)] + [_row(summary) for summary in summaries]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("---" for _ in _HEADERS) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_errors(summaries: Sequence[Summary]) -> str:
    """One line per run that lost requests: how many, and the first error seen."""
    lines = []
    for summary in summaries:
        lost = summary.num_errors + summary.num_cancelled
        if lost:
            load = _row(summary)[1]
            lines.append(
                f"{summary.label} {load}: {summary.num_errors} failed, "
                f"{summary.num_cancelled} cut off by the time limit"
                + (f"; first error: {summary.first_error}" if summary.first_error else "")
            )
    return "\n".join(lines)


def plot_throughput(series: Mapping[str, Sequence[Summary]], path: Path) -> None:
    """A PNG of output tokens/s against concurrency, one line per server (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as error:  # optional: only the plot needs it
        raise RuntimeError("plotting needs matplotlib: pip install matplotlib") from error
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    levels: set[int] = set()
    for name, summaries in series.items():
        points = sorted(
            (s.concurrency, s.output_tokens_per_s) for s in summaries if s.concurrency is not None
        )
        levels.update(c for c, _ in points)
        if points:
            axes.plot([c for c, _ in points], [t for _, t in points], marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(levels), [str(level) for level in sorted(levels)])
    axes.minorticks_off()
    axes.set_ylim(bottom=0)
    axes.set_xlabel("concurrent clients")
    axes.set_ylabel("output tokens/s")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
