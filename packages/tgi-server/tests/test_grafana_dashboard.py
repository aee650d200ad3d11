"""``docs/grafana/tgi.json`` charts only what we export: every metric its PromQL names, and
every label it selects or groups by, is in a real ``/metrics`` scrape of the app."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from tgi_server.testing import Harness

DASHBOARD = Path(__file__).resolve().parents[3] / "docs" / "grafana" / "tgi.json"

# PromQL's functions, aggregations and keywords the dashboard may use.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "rate", "increase", "irate", "histogram_quantile",
    "by", "without", "on", "ignoring", "bool", "and", "or", "unless", "offset", "clamp_min",
}  # fmt: skip
# Prometheus adds these to every series at scrape time.
TARGET_LABELS = {"instance", "job"}
SAMPLE = re.compile(r"^([a-z_:]+)(?:\{([^}]*)\})? \S+$")
LABEL = re.compile(r'(\w+)="([^"]*)"')
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk(panel.get("panels", []))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


@pytest.fixture(scope="module")
def exported(harness: Harness) -> dict[str, list[dict[str, str]]]:
    """Each sample name of a scrape (histograms with their _bucket/_sum/_count) and the
    label sets it comes with, after a good request and a refused one."""
    client = falcon.testing.TestClient(harness.app())
    ok = {"inputs": "Hello", "parameters": {"max_new_tokens": 3}}
    assert client.simulate_post("/generate", json=ok).status_code == 200
    bad = {"inputs": "Hello", "parameters": {"max_new_tokens": 0}}
    assert client.simulate_post("/generate", json=bad).status_code == 422
    samples: dict[str, list[dict[str, str]]] = {}
    for line in client.simulate_get("/metrics").text.splitlines():
        if not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, line
            samples.setdefault(match[1], []).append(dict(LABEL.findall(match[2] or "")))
    return samples


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every query of every panel."""
    found = []
    for panel in walk(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        targets = [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
        assert targets, f"panel {panel['title']!r} has no query"
        found += [(panel["title"], expr) for expr in targets]
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression: what is left once strings, label matchers,
    ranges, groupings, numbers and PromQL's own words are taken out."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    bare = GROUPING.sub("", bare)
    words = set(re.findall(r"(?<![\w.])[A-Za-z_:][\w:]*", bare))
    return words - PROMQL_WORDS


def test_every_metric_a_panel_queries_is_exported(
    dashboard: dict[str, Any], exported: dict[str, list[dict[str, str]]]
) -> None:
    used: set[str] = set()
    for title, expr in expressions(dashboard):
        names = metric_names(expr)
        assert names, (title, expr)
        assert names <= set(exported), (title, names - set(exported))
        used |= names
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"])
        assert match and match[1] in exported and match[2] in TARGET_LABELS
    # TGI's step metrics, and the panels, are all charted.
    for name in (
        "tgi_batch_forward_duration_bucket",
        "tgi_batch_decode_duration_bucket",
        "tgi_batch_filter_duration_bucket",
        "tgi_batch_inference_duration_bucket",
        "tgi_batch_concat_duration_bucket",
        "tgi_batch_inference_success",
        "tgi_batch_next_size_bucket",
        "tgi_request_skipped_tokens_sum",
        "tgi_request_count",
        "tgi_request_duration_bucket",
        "tgi_request_queue_duration_bucket",
        "tgi_request_mean_time_per_token_duration_bucket",
        "tgi_request_input_length_bucket",
        "tgi_request_generated_tokens_bucket",
        "tgi_queue_size",
        "tgi_batch_current_size",
        "tgi_kv_blocks_used",
    ):
        assert name in used, name


def test_every_label_a_panel_selects_or_groups_by_exists(
    dashboard: dict[str, Any], exported: dict[str, list[dict[str, str]]]
) -> None:
    for title, expr in expressions(dashboard):
        for metric, matchers in SELECTOR.findall(expr):
            # Equality matchers must find a series (=~ ones name Grafana's variables).
            for key, value in re.findall(r'(\w+)="([^"]*)"', matchers):
                assert any(s.get(key) == value for s in exported[metric]), (title, metric, key)
            for key in re.findall(r'(\w+)=~"', matchers):
                assert key in TARGET_LABELS, (title, key)
        metrics = metric_names(expr)
        for grouping in GROUPING.findall(expr):
            for key in (k.strip() for k in grouping.split(",")):
                assert key in TARGET_LABELS or any(
                    key in s for m in metrics for s in exported[m]
                ), (title, key)


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le, method) (rate(tgi_a_bucket{method="x", '
        'instance=~"$instance"}[$__rate_interval]))) / sum(tgi_b) + 1e-3'
    )
    assert metric_names(expr) == {"tgi_a_bucket", "tgi_b"}
