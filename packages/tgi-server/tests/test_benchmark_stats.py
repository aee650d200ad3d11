"""Benchmark statistics on recorded event timings: percentiles, ITL, summaries and tables."""

from __future__ import annotations

import json
import math

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tgi_server.benchmark.client import RequestRecord
from tgi_server.benchmark.report import (
    Distribution,
    format_errors,
    format_table,
    inter_token_latencies,
    percentile,
    plot_throughput,
    summarize,
)
from tgi_server.benchmark.runner import LoadSpec, RunResult


def test_percentile_interpolates_linearly() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(1, 11))), 90) == pytest.approx(9.1)
    assert percentile([5.0], 99) == 5.0
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@given(
    st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=50),
    st.floats(0, 100),
)
def test_percentile_matches_numpy(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(numpy.percentile(values, q)), abs=1e-6)


def test_inter_token_latencies_are_consecutive_gaps() -> None:
    assert inter_token_latencies([1.0, 1.5, 1.75, 2.75]) == [0.5, 0.25, 1.0]
    assert inter_token_latencies([1.0]) == []
    assert inter_token_latencies([]) == []


def _record(start: float, token_times: list[float], end: float, **kwargs: object) -> RequestRecord:
    record = RequestRecord(start=start, end=end, token_times=token_times, **kwargs)  # type: ignore[arg-type]
    if "num_output_tokens" not in kwargs:
        record.num_output_tokens = len(token_times)
    return record


def _recorded_run() -> RunResult:
    records = [
        # TTFT 0.1, ITL 0.05 x 3, E2E 0.3
        _record(0.0, [0.1, 0.15, 0.2, 0.25], 0.3, num_input_tokens=10),
        # TTFT 0.3, ITL 0.1 + 0.3, E2E 0.9; usage says 5 tokens (one event held two)
        _record(0.1, [0.4, 0.5, 0.8], 1.0, num_output_tokens=5, num_input_tokens=20),
        _record(0.2, [], 0.25, error="HTTP 422: Input validation error"),
    ]
    spec = LoadSpec(num_requests=4, max_duration_s=10.0, concurrency=2)
    return RunResult(spec, records, num_sent=4, num_cancelled=1, duration_s=2.0)


def test_summary_of_recorded_timings() -> None:
    summary = summarize(_recorded_run(), "peer")
    assert (summary.num_sent, summary.num_ok, summary.num_errors, summary.num_cancelled) == (
        4, 2, 1, 1,
    )  # fmt: skip
    assert summary.requests_per_s == pytest.approx(1.0)
    assert summary.output_tokens_per_s == pytest.approx((4 + 5) / 2.0)
    assert summary.mean_output_tokens == pytest.approx(4.5)
    assert summary.mean_input_tokens == pytest.approx(15.0)
    assert summary.ttft.p50 == pytest.approx(0.2)
    assert summary.ttft.mean == pytest.approx(0.2)
    itl = [0.05, 0.05, 0.05, 0.1, 0.3]
    assert summary.itl.p50 == pytest.approx(0.05)
    assert summary.itl.p90 == pytest.approx(percentile(itl, 90))
    assert summary.itl.mean == pytest.approx(sum(itl) / 5)
    assert summary.e2e.p99 == pytest.approx(0.3 + 0.99 * 0.6)
    assert summary.first_error == "HTTP 422: Input validation error"
    assert summary.concurrency == 2


def test_a_run_with_nothing_finished_reports_nan_as_null() -> None:
    spec = LoadSpec(num_requests=2, max_duration_s=1.0, request_rate=1.0)
    summary = summarize(RunResult(spec, [], num_sent=2, num_cancelled=2, duration_s=1.0))
    assert summary.num_ok == 0
    assert math.isnan(summary.ttft.p50)
    document = json.loads(json.dumps(summary.to_json(), allow_nan=False))
    assert document["ttft"] == {"mean": None, "p50": None, "p90": None, "p99": None}
    assert document["request_rate"] == 1.0


def test_tables_and_error_lines() -> None:
    summary = summarize(_recorded_run(), "llama.cpp")
    text = format_table([summary])
    header, row = text.splitlines()
    assert header.split()[:3] == ["run", "load", "ok/sent"]
    assert row.split() == [
        "llama.cpp", "c=2", "2/4", "1.00", "4.5", "15", "4.5",
        "200/280/298", "50.0/220.0/292.0", "0.60/0.84/0.89",
    ]  # fmt: skip
    markdown = format_table([summary, summary], markdown=True).splitlines()
    assert len(markdown) == 4
    assert markdown[1].startswith("|---|")
    assert markdown[2].startswith("| llama.cpp | c=2 | 2/4 |")
    assert format_errors([summary]) == (
        "llama.cpp c=2: 1 failed, 1 cut off by the time limit; "
        "first error: HTTP 422: Input validation error"
    )


def test_distribution_of_nothing() -> None:
    assert all(math.isnan(v) for v in vars(Distribution.of([])).values())


def test_plot_writes_a_png_or_says_what_is_missing(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "throughput.png"
    summary = summarize(_recorded_run(), "x")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install matplotlib"):
            plot_throughput({"x": [summary]}, path)
        return
    plot_throughput({"x": [summary]}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
