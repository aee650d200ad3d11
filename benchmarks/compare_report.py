"""compare.py's repeated runs reduced to medians and spreads, and its Markdown report.

Each configuration (a peer with its settings, e.g. ``llama.cpp-f16 np=32``) runs ``--repeats``
times per concurrency level. Per configuration and level the report gives the median and the
min-max of throughput, TTFT p50 and p99 and ITL p50; a peer's best configuration per level is
the one with the highest median throughput. A claim "A beats B" holds only where their spreads
do not overlap: the ratio tables say so in their last columns. Servers that count prefix-cache
hits (ours) get a table of them per run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from machine import CLEAN_OTHER_CORES
from server_metrics import PrefixCache

from tgi_server.benchmark import report
from tgi_server.benchmark.report import Summary

__all__ = ["Outcome", "Spread", "best_rows", "markdown", "representative", "rows"]

# The flags that decide which kernels the servers use; the JSON keeps the full list.
KEY_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8",
             "amx_bf16")  # fmt: skip


@dataclass
class Outcome:
    """What one peer gave over every round: its runs, or why it could not run."""

    name: str
    summaries: list[Summary] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)  # where the cores went, per run
    rounds: list[int] = field(default_factory=list)  # the round of each run
    prefix_cache: list[PrefixCache | None] = field(default_factory=list)  # per run, if counted
    commands: dict[str, str] = field(default_factory=dict)  # configuration -> command line
    info: dict[str, Any] | None = None  # the server's own description (our /info)
    skipped: str | None = None


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure over the repeats."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def apart_from(self, other: Spread) -> bool:
        return self.low > other.high or self.high < other.low

    def text(self, scale: float = 1.0, digits: int = 1) -> str:
        return f"{self.median * scale:.{digits}f} ({self.low * scale:.{digits}f}-" \
            f"{self.high * scale:.{digits}f})"  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One configuration at one level over its repeats."""

    peer: str
    label: str
    level: int
    runs: int
    tok_s: Spread
    ttft_p50: Spread
    ttft_p99: Spread
    itl_p50: Spread


FIGURES: dict[str, Callable[[Summary], float]] = {
    "tok_s": lambda s: s.output_tokens_per_s,
    "ttft_p50": lambda s: s.ttft.p50,
    "ttft_p99": lambda s: s.ttft.p99,
    "itl_p50": lambda s: s.itl.p50,
}


def rows(outcome: Outcome) -> list[Row]:
    """Per configuration and level, the spread of each figure over the runs that succeeded."""
    groups: dict[tuple[str, int], list[Summary]] = {}
    for summary in outcome.summaries:
        if summary.num_ok:
            groups.setdefault((summary.label, summary.concurrency or 0), []).append(summary)
    return [
        Row(outcome.name, label, level, len(runs),
            *(Spread.of([figure(s) for s in runs]) for figure in FIGURES.values()))
        for (label, level), runs in groups.items()
    ]  # fmt: skip


def best_rows(outcome: Outcome) -> dict[int, Row]:
    """Per level, the configuration with the highest median throughput."""
    best: dict[int, Row] = {}
    for row in rows(outcome):
        if row.level not in best or row.tok_s.median > best[row.level].tok_s.median:
            best[row.level] = row
    return best


def representative(outcome: Outcome) -> list[Summary]:
    """Per level, the run of the best configuration whose throughput is nearest its median
    (one line per peer in the plot)."""
    chosen = []
    for level, row in sorted(best_rows(outcome).items()):
        runs = [s for s in outcome.summaries if s.label == row.label and s.concurrency == level]
        chosen.append(min(runs, key=lambda s: abs(s.output_tokens_per_s - row.tok_s.median)))
    return chosen


def _table(table_rows: Sequence[Row]) -> list[str]:
    lines = ["| configuration | clients | runs | out tok/s median (min-max) "
             "| TTFT p50 ms median (min-max) | TTFT p99 ms median (min-max) "
             "| ITL p50 ms median (min-max) |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    lines += [
        f"| {row.label} | {row.level} | {row.runs} | {row.tok_s.text()} | "
        f"{row.ttft_p50.text(1000, 0)} | {row.ttft_p99.text(1000, 0)} | "
        f"{row.itl_p50.text(1000, 1)} |"
        for row in sorted(table_rows, key=lambda row: (row.level, -row.tok_s.median))
    ]
    return lines


def _ratios(outcomes: Sequence[Outcome], ours: str) -> list[str]:
    """Ours against each other peer's best configuration per level, with the separation."""
    mine = next((best_rows(o) for o in outcomes if o.name == ours), {})
    lines = ["| clients | peer (best configuration) | ours / peer tok/s | ours / peer ITL p50 "
             "| ours / peer TTFT p50 | throughput spreads apart | ITL spreads apart "
             "| TTFT spreads apart |", "|---:|---|---:|---:|---:|---|---|---|"]  # fmt: skip
    for outcome in outcomes:
        if outcome.name == ours:
            continue
        for level, row in sorted(best_rows(outcome).items()):
            if (own := mine.get(level)) is None:
                continue
            lines.append(
                f"| {level} | {row.label} | {own.tok_s.median / row.tok_s.median:.2f}x | "
                f"{own.itl_p50.median / row.itl_p50.median:.2f}x | "
                f"{own.ttft_p50.median / row.ttft_p50.median:.2f}x | "
                f"{_apart(own, row, 'tok_s')} | {_apart(own, row, 'itl_p50')} | "
                f"{_apart(own, row, 'ttft_p50')} |"
            )
    return lines if len(lines) > 2 else []


def _apart(own: Row, peer: Row, figure: str) -> str:
    if min(own.runs, peer.runs) < 2:
        return "n/a (one run)"  # a single run has no spread to judge by
    return "yes" if getattr(own, figure).apart_from(getattr(peer, figure)) else "no (overlap)"


def markdown(document: dict[str, Any], outcomes: Sequence[Outcome], ours: str = "ours") -> str:
    machine, limits = document["machine"], document.get("limits") or {}
    flags = set(machine.get("cpu_flags", ()))
    lines = [
        f"# Serving comparison, {document['date']}",
        "",
        f"- machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores "
        f"({machine['logical_cores']} logical), {machine['memory_gib']} GiB",
        f"- CPU flags: {' '.join(f for f in KEY_FLAGS if f in flags) or 'none of note'} "
        f"(absent: {' '.join(f for f in KEY_FLAGS if f not in flags) or 'none'})",
        f"- command: `{document['command']}`",
        f"- model: `{document['model']}`; profile `{document['profile']}`, "
        f"max tokens {document['max_new_tokens']}, {document['num_requests']} requests per level, "
        f"slot context {document['ctx_per_slot']}, {document['repeats']} rounds (interleaved)",
        *(f"- {name} version: `{text}`" for name, text in document.get("versions", {}).items()),
    ]
    if limits:
        lines += ["", "## Machine limits", "", "| measure | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in limits.items()]
    lines += ["", "## Best configuration per server and level", ""]
    lines += _table([row for o in outcomes for row in best_rows(o).values()])
    if ratios := _ratios(outcomes, ours):
        lines += ["", "## Ours against each peer's best configuration (medians)", "", *ratios]
    lines += ["", "## Every configuration", ""]
    lines += _table([row for o in outcomes for row in rows(o)])
    lines += ["", "## Command lines and server descriptions", ""]
    for outcome in outcomes:
        lines += [f"- {label}: `{command}`" for label, command in outcome.commands.items()]
        if outcome.info:
            lines += [f"- {outcome.name} /info: " + ", ".join(
                f"{key} `{value}`" for key, value in outcome.info.items())]  # fmt: skip
    lines += _prefix_cache(outcomes)
    lines += _cores(outcomes)
    notes = [report.format_errors(o.summaries) for o in outcomes]
    notes += [f"{o.name} skipped: {o.skipped}" for o in outcomes if o.skipped]
    if any(notes):
        lines += ["", "## Notes", "", *(f"- {n}" for note in notes for n in note.splitlines())]
    return "\n".join(lines) + "\n"


def _cores(outcomes: Sequence[Outcome]) -> list[str]:
    lines = ["", "## Where the cores went (other work on the machine skews the figures)", "",
             "| round | run | load | server cores | client cores | other work cores "
             "| load avg 1 min | clean |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for outcome in outcomes:
        for summary, cpu, round_ in zip(outcome.summaries, outcome.cpu, outcome.rounds,
                                        strict=True):  # fmt: skip
            lines.append(
                f"| {round_ + 1} | {summary.label} | c={summary.concurrency} | "
                f"{cpu['server_cores']} | {cpu['client_cores']} | {cpu['other_cores']} | "
                f"{cpu['loadavg_1m_after']} | "
                f"{'yes' if cpu['other_cores'] < CLEAN_OTHER_CORES else 'NO'} |"
            )
    return lines


def _prefix_cache(outcomes: Sequence[Outcome]) -> list[str]:
    """Per run, the prompt tokens looked up in the prefix cache and found there."""
    lines = ["", "## Prefix cache (prompt tokens per run, its warmup request included)", "",
             "| round | run | load | hit tokens | query tokens | hit ratio | TTFT p50 ms |",
             "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for outcome in outcomes:
        for summary, cache, round_ in zip(outcome.summaries, outcome.prefix_cache,
                                          outcome.rounds, strict=True):  # fmt: skip
            if cache is None:
                continue
            ratio = "off (no lookups)" if cache.hit_ratio is None else f"{cache.hit_ratio:.1%}"
            lines.append(
                f"| {round_ + 1} | {summary.label} | c={summary.concurrency} | "
                f"{cache.hit_tokens} | {cache.query_tokens} | {ratio} | "
                f"{summary.ttft.p50 * 1000:.0f} |"
            )
    return lines if len(lines) > 5 else []
