"""What our server tells compare.py about itself: its ``/info`` and its prefix-cache counters.

The prefix-cache counters are read from its Prometheus ``/metrics`` around each load level. The
scheduler counts, at each prefill, the prompt tokens it looked up in the prefix cache
(``tgi_prefix_cache_query_tokens``) and those it found (``tgi_prefix_cache_hit_tokens``);
with ``PREFIX_CACHING=0`` it looks nothing up and both stay 0. The API port's ``/metrics``
serves them (``--prometheus-port`` forwards to it). A level's figures are the difference of
two scrapes, so they include its one warmup request (a few tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["PrefixCache", "describe", "parse_prefix_cache", "read_prefix_cache"]

HIT_TOKENS = "tgi_prefix_cache_hit_tokens"
QUERY_TOKENS = "tgi_prefix_cache_query_tokens"
INFO_KEYS = ("model_dtype", "model_device_type", "compute_path")


def describe(url: str) -> dict[str, Any]:
    """The server's ``/info`` fields that say which kernels it runs."""
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        info = client.get(f"{url}/info").json()
    return {key: info.get(key) for key in INFO_KEYS}


@dataclass(frozen=True)
class PrefixCache:
    """Prompt tokens looked up in the prefix cache and found there (totals or a difference)."""

    hit_tokens: int
    query_tokens: int

    @property
    def hit_ratio(self) -> float | None:
        """Found over looked up; None when nothing was looked up (the cache is off)."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else None

    @staticmethod
    def between(before: PrefixCache | None, after: PrefixCache | None) -> PrefixCache | None:
        """What the counters counted from ``before`` to ``after``; None if either is unknown."""
        if before is None or after is None:
            return None
        return PrefixCache(after.hit_tokens - before.hit_tokens,
                           after.query_tokens - before.query_tokens)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        ratio = self.hit_ratio
        return {"hit_tokens": self.hit_tokens, "query_tokens": self.query_tokens,
                "hit_ratio": None if ratio is None else round(ratio, 4)}  # fmt: skip


def parse_prefix_cache(text: str) -> PrefixCache | None:
    """The two counters of a ``/metrics`` text; None if either is missing (no engine stats)."""
    # by family: the parser names a counter's samples "<name>_total", as OpenMetrics does
    values = {
        family.name: int(sum(sample.value for sample in family.samples))
        for family in text_string_to_metric_families(text)
        if family.name in (HIT_TOKENS, QUERY_TOKENS)
    }
    if len(values) < 2:
        return None
    return PrefixCache(values[HIT_TOKENS], values[QUERY_TOKENS])


def read_prefix_cache(url: str) -> PrefixCache | None:
    """The counters of the server at ``url`` (its base URL) now."""
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        response = client.get(f"{url}/metrics")
    response.raise_for_status()
    return parse_prefix_cache(response.text)
