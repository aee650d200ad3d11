"""Prometheus metrics with TGI's names, labels and buckets, across Gunicorn workers.

Request metrics (``tgi_request_*``) are recorded by each HTTP worker with prometheus-client.
With several workers, prometheus-client's multiprocess mode keeps each worker's values in
files of a directory the launcher creates and exports as ``PROMETHEUS_MULTIPROC_DIR`` before
the workers start (prometheus-client reads that variable itself, when imported); the worker
that answers ``/metrics`` merges every worker's files. The same directory is passed here
explicitly, for the merge.

The engine's state (queue, batch, KV blocks, steps, warmup) is not a per-worker value: it
is read from the engine's ``EngineStatus`` at scrape time and rendered from that snapshot,
with TGI's names (``tgi_queue_size``, ``tgi_batch_current_size``, ...) plus our Gaudi-side
ones (warmup, shapes run unwarmed, KV blocks, prefix-cache hits, preemptions).

The step histograms are the engine's too (``tgi_scheduler.stats.StepTimer``, bucket counts
kept in the engine process, so every worker shows the same values), with TGI's labels and
buckets; what each measures on our side, where TGI's router and shards split differently:

- ``tgi_batch_forward_duration{method}``: the runner's ``execute`` of the step (the
  device's forward and sampling; TGI: the shard's ``forward_ns``).
- ``tgi_batch_decode_duration{method}``: the scheduler's ``update`` after it: tokens
  appended, stop sequences checked (their detokenization runs here), events built (TGI: the
  shard's detokenization). The streamed text is detokenized per request in the HTTP workers,
  not per batch, so it is not in here.
- ``tgi_batch_filter_duration{method}``: the scheduler's ``schedule`` of the step, which
  turns the previous batch into this one (finished sequences dropped, KV grown, queued ones
  admitted; TGI: ``filter_batch`` after sending the generations).
- ``tgi_batch_concat_duration{method="decode"}``: that same time for a prefill that joins a
  running batch (TGI: concatenating the new batch onto the running one).
- ``tgi_batch_inference_duration{method}``: the whole step, and
  ``tgi_batch_inference_success`` / ``_failure{method}`` its outcome.
- ``tgi_batch_next_size``: the number of queued requests each prefill admits (TGI: the size
  of each batch the queue hands over), buckets 1 to 1024.
- ``tgi_request_skipped_tokens``: one observation per sequence and step, of the tokens the
  step gave it beyond one (draft tokens accepted under ``--speculate``); buckets
  ``0..=speculate`` as TGI's (``le="0"`` only without speculation).

The text is rendered here rather than by ``prometheus_client.generate_latest``, which would
rename every counter ``<name>_total``: TGI's counters are plain ``tgi_request_count``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import values as prometheus_values
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from tgi_core.contract import WarmupReport
from tgi_core.engine_stats import DURATION_BUCKETS, HistogramSnapshot, StepStats
from tgi_core.settings.slices import ValidationLimits
from tgi_server.ipc.messages import EngineStatus

__all__ = ["CONTENT_TYPE", "DURATION_BUCKETS", "ServerMetrics", "engine_families", "linear_buckets"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def linear_buckets(max_value: int, num_buckets: int = 100) -> tuple[float, ...]:
    """TGI's token-count buckets: ``num_buckets`` even steps up to ``max_value``."""
    return tuple((max_value / num_buckets) * (i + 1) for i in range(num_buckets))


class ServerMetrics:
    """The request metrics of one worker, and the ``/metrics`` text of all of them.

    Args:
        limits: the validation limits (bucket ranges of token-count histograms).
        multiprocess_dir: prometheus-client's multiprocess directory (the workers'
            ``PROMETHEUS_MULTIPROC_DIR``); None for a single process.

    Raises:
        ValueError: ``multiprocess_dir`` is given but prometheus-client was not started in
            multiprocess mode, so the workers' values would never reach the directory.
    """

    def __init__(self, limits: ValidationLimits, *, multiprocess_dir: str | None = None) -> None:
        if multiprocess_dir is not None:
            if not getattr(prometheus_values.ValueClass, "_multiprocess", False):
                raise ValueError(
                    "prometheus-client is not in multiprocess mode: PROMETHEUS_MULTIPROC_DIR "
                    "must be set to the metrics directory before the worker starts"
                )
            if not Path(multiprocess_dir).is_dir():
                raise ValueError(f"the metrics directory {multiprocess_dir} does not exist")
        self._multiprocess_dir = multiprocess_dir
        # Never scraped in multiprocess mode (the merged files are); a private registry keeps
        # several apps in one process (tests) apart.
        self._registry = CollectorRegistry(auto_describe=False)
        registry = self._registry
        self.request_count = Counter(
            "tgi_request_count", "Total number of requests", registry=registry
        )
        self.request_success = Counter(
            "tgi_request_success", "Number of successful requests", registry=registry
        )
        self.request_failure = Counter(
            "tgi_request_failure", "Number of failed requests", ["err"], registry=registry
        )
        self.request_duration = self._duration(
            "tgi_request_duration", "Total time spent processing the request"
        )
        self.validation_duration = self._duration(
            "tgi_request_validation_duration", "Time spent validating the request"
        )
        self.queue_duration = self._duration(
            "tgi_request_queue_duration", "Time spent in the queue per request"
        )
        self.inference_duration = self._duration(
            "tgi_request_inference_duration", "Request inference duration"
        )
        self.mean_time_per_token_duration = self._duration(
            "tgi_request_mean_time_per_token_duration", "Mean time per token per request"
        )
        max_total = linear_buckets(limits.max_total_tokens)
        self.input_length = Histogram(
            "tgi_request_input_length",
            "Input token length per request",
            buckets=linear_buckets(limits.max_input_tokens),
            registry=registry,
        )
        self.max_new_tokens = Histogram(
            "tgi_request_max_new_tokens",
            "Maximum new tokens per request",
            buckets=max_total,
            registry=registry,
        )
        self.generated_tokens = Histogram(
            "tgi_request_generated_tokens",
            "Generated tokens per request",
            buckets=max_total,
            registry=registry,
        )

    def _duration(self, name: str, documentation: str) -> Histogram:
        return Histogram(name, documentation, buckets=DURATION_BUCKETS, registry=self._registry)

    def record_failure(self, err: str | None) -> None:
        """Count a failed request under ``tgi_request_failure{err=...}`` (None: not counted)."""
        if err is not None:
            self.request_failure.labels(err=err).inc()

    def render(self, status: EngineStatus | None, warmup: WarmupReport | None) -> bytes:
        """The Prometheus text of every worker's request metrics and the engine's state."""
        if self._multiprocess_dir is not None:
            merged = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(merged, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
            families = list(merged.collect())
        else:
            families = list(self._registry.collect())
        families.extend(engine_families(status, warmup))
        return render_text(families)


def engine_families(status: EngineStatus | None, warmup: WarmupReport | None) -> list[Metric]:
    """The engine's metrics from one ``EngineStatus`` snapshot (none if the engine is away)."""
    families: list[Metric] = []
    if warmup is not None:
        families.append(_gauge("tgi_warmup_seconds", "Warmup duration", warmup.seconds))
        families.append(
            _gauge("tgi_warmup_shapes", "Bucket shapes run by warmup", warmup.num_shapes)
        )
        families.append(_gauge("tgi_warmup_graphs", "Graphs captured by warmup", warmup.num_graphs))
    if status is None:
        return families
    stats = status.engine
    families += [
        _gauge("tgi_queue_size", "Current queue size", stats.queue_size),
        _gauge("tgi_batch_current_size", "Current batch size", stats.batch_size),
        _gauge(
            "tgi_batch_current_max_tokens",
            "Maximum tokens for the current batch",
            stats.batch_current_max_tokens,
        ),
        _gauge(
            "tgi_batch_max_total_tokens",
            "Maximum amount of tokens in total.",
            stats.batch_max_total_tokens,
        ),
        _gauge("tgi_kv_blocks_total", "KV cache blocks", stats.kv_blocks_total),
        _gauge("tgi_kv_blocks_used", "KV cache blocks in use", stats.kv_blocks_used),
        _gauge(
            "tgi_kv_blocks_free",
            "KV cache blocks free (cached ones included)",
            stats.kv_blocks_free,
        ),
        _gauge("tgi_engine_healthy", "1 when the last generation succeeded", int(status.healthy)),
    ]
    families.append(
        _counter(
            "tgi_batch_inference_count",
            "Inference calls per method (prefill or decode)",
            label="method",
            values={"prefill": stats.num_prefill_steps, "decode": stats.num_decode_steps},
        )
    )
    families.append(
        _counter(
            "tgi_batch_concat",
            "Number of batch concatenates",
            label="reason",
            values={
                "backpressure": stats.num_concat_backpressure,
                "wait_exceeded": stats.num_concat_wait_exceeded,
            },
        )
    )
    for name, documentation, value in (
        (
            "tgi_unwarmed_shapes",
            "Steps run after warmup at a shape warmup did not run",
            stats.num_unwarmed_shapes,
        ),
        ("tgi_preemptions", "Sequences preempted to free KV blocks", stats.num_preemptions),
        (
            "tgi_prefix_cache_hit_tokens",
            "Prompt tokens found in the prefix cache",
            stats.prefix_cache_hit_tokens,
        ),
        (
            "tgi_prefix_cache_query_tokens",
            "Prompt tokens looked up in the prefix cache",
            stats.prefix_cache_query_tokens,
        ),
    ):
        families.append(_counter(name, documentation, values={"": value}))
    if stats.steps is not None:
        families += _step_families(stats.steps)
    return families


def _step_families(steps: StepStats) -> list[Metric]:
    """TGI's per-step histograms and outcome counters (see the module docstring)."""
    methods = {"prefill": steps.prefill, "decode": steps.decode}
    families: list[Metric] = [
        _counter(
            "tgi_batch_inference_success",
            "Number of successful inference calls",
            label="method",
            values={method: stats.num_success for method, stats in methods.items()},
        ),
        _counter(
            "tgi_batch_inference_failure",
            "Number of failed inference calls",
            label="method",
            values={method: stats.num_failure for method, stats in methods.items()},
        ),
    ]
    for name, documentation, attribute in (
        ("tgi_batch_forward_duration", "Batch forward duration per method", "forward"),
        ("tgi_batch_decode_duration", "Batch decode duration per method", "decode"),
        ("tgi_batch_filter_duration", "Batch filtering duration per method", "filter"),
        ("tgi_batch_inference_duration", "Batch inference duration per method", "inference"),
    ):
        histograms = {method: getattr(stats, attribute) for method, stats in methods.items()}
        families.append(_histogram(name, documentation, histograms, label="method"))
    families += [
        _histogram(
            "tgi_batch_concat_duration",
            "Batch concatenation duration",
            {"decode": steps.concat},
            label="method",
        ),
        _histogram("tgi_batch_next_size", "Batch size of the next batch", {"": steps.next_size}),
        _histogram(
            "tgi_request_skipped_tokens",
            "Speculated tokens per request",
            {"": steps.skipped_tokens},
        ),
    ]
    return families


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(
    name: str, documentation: str, *, values: dict[str, float], label: str | None = None
) -> Metric:
    """A counter family; ``values`` maps each value of ``label`` (``""`` if none) to a total."""
    family = CounterMetricFamily(name, documentation, labels=[label] if label else [])
    for label_value, value in values.items():
        family.add_metric([label_value] if label else [], value)
    return family


def _histogram(
    name: str,
    documentation: str,
    histograms: dict[str, HistogramSnapshot],
    *,
    label: str | None = None,
) -> Metric:
    """A histogram family; ``histograms`` maps each value of ``label`` (``""`` if none) to
    its bucket counts, made cumulative here as Prometheus wants them."""
    family = HistogramMetricFamily(name, documentation, labels=[label] if label else [])
    for label_value, histogram in histograms.items():
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*histogram.bounds, math.inf), histogram.counts, strict=True):
            total += count
            buckets.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        family.add_metric([label_value] if label else [], buckets, histogram.sum)
    return family


def render_text(families: Iterable[Metric]) -> bytes:
    """Prometheus text format with TGI's names: counters keep their bare name."""
    lines: list[str] = []
    for family in families:
        name = family.name
        lines.append(f"# HELP {name} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {name} {family.type}")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            sample_name = name if family.type == "counter" else sample.name
            lines.append(f"{sample_name}{_labels(sample.labels)} {_number(sample.value)}")
    return ("\n".join(lines) + "\n").encode()


def _number(value: float) -> str:
    """Whole numbers without ``.0``, as TGI's exporter prints counts."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    pairs = ",".join(f'{key}="{_escape_label(value)}"' for key, value in sorted(labels.items()))
    return "{" + pairs + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")
