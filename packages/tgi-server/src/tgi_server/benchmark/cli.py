"""``tgi-benchmark``: load one server on 127.0.0.1 with a profile, at one or more load levels.

    tgi-benchmark --url http://127.0.0.1:8080 --api tgi --profile chat --concurrency 1,8,32
    tgi-benchmark --api chat --profile classification --rate 0.5,1,2 --json out.json

Prints a table per run and, if asked, writes JSON and a throughput plot. ``run_sweep`` is the
same loop for scripts (``benchmarks/compare.py`` uses it). Servers are not started here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tgi_server.benchmark.client import APIS, Api
from tgi_server.benchmark.profiles import (
    PROFILES,
    BenchRequest,
    make_requests,
    render_chatml,
    render_raw,
)
from tgi_server.benchmark.report import (
    Summary,
    format_errors,
    format_table,
    plot_throughput,
    summarize,
)
from tgi_server.benchmark.runner import LoadSpec, check_local_url, run_load_sync


def run_sweep(
    base_url: str,
    api: Api,
    requests: Sequence[BenchRequest],
    loads: Sequence[LoadSpec],
    *,
    label: str = "",
    model: str = "tgi",
    extra_body: dict[str, Any] | None = None,
) -> list[Summary]:
    """Runs each load level in turn against one server; one ``Summary`` per level.

    Level ``k`` starts where level ``k - 1``'s requests ended, so give ``requests`` at least the
    sum of the levels' ``num_requests`` to serve each prompt once.
    """
    summaries = []
    first_index = 0
    for spec in loads:
        result = run_load_sync(
            base_url, api, requests, spec,
            model=model, extra_body=extra_body, first_index=first_index,
        )  # fmt: skip
        first_index += spec.num_requests  # fresh prompts for each level
        summaries.append(summarize(result, label))
    return summaries


def _numbers(text: str, kind: type[int] | type[float]) -> list[Any]:
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {text!r}") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tgi-benchmark",
        description="Streaming load generator for TGI and OpenAI-compatible servers on 127.0.0.1.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    parser.add_argument("--api", choices=APIS, default="tgi", help="route family to load")
    parser.add_argument("--profile", choices=list(PROFILES), default="chat")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", default=None, help="closed-loop clients, e.g. 1,8,32")
    load.add_argument("--rate", default=None, help="Poisson request rates per second, e.g. 1,2")
    parser.add_argument("--max-concurrency", type=int, default=128, help="in-flight cap (rate)")
    parser.add_argument("--num-requests", type=int, default=64, help="per load level")
    parser.add_argument("--duration", type=float, default=120.0, help="max seconds per level")
    parser.add_argument("--max-tokens", type=int, default=None, help="override the profile's")
    parser.add_argument("--input-tokens", type=int, default=None, help="fixed-length input")
    parser.add_argument("--num-prompts", type=int, default=None, help="distinct prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--template", choices=("chatml", "raw"), default="chatml",
                        help="how tgi/completions prompts render the chat turn")  # fmt: skip
    parser.add_argument("--model", default="tgi", help="the OpenAI 'model' field")
    parser.add_argument("--ignore-eos", action="store_true", help="send ignore_eos: true")
    parser.add_argument("--extra-body", default=None, help="JSON merged into each request")
    parser.add_argument("--warmup", type=int, default=1, help="requests before each level")
    parser.add_argument("--label", default="", help="name of the server in the table")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of tok/s vs concurrency")
    return parser


def _loads(args: argparse.Namespace) -> list[LoadSpec]:
    common = {
        "num_requests": args.num_requests,
        "max_duration_s": args.duration,
        "num_warmup": args.warmup,
        "seed": args.seed,
    }
    if args.rate is not None:
        return [
            LoadSpec(request_rate=rate, max_concurrency=args.max_concurrency, **common)
            for rate in _numbers(args.rate, float)
        ]
    levels = _numbers(args.concurrency or "1", int)
    return [LoadSpec(concurrency=level, **common) for level in levels]


def _extra_body(args: argparse.Namespace) -> dict[str, Any]:
    extra: dict[str, Any] = json.loads(args.extra_body) if args.extra_body else {}
    if not isinstance(extra, dict):
        raise ValueError("--extra-body must be a JSON object")
    if args.ignore_eos:
        extra["ignore_eos"] = True
    return extra


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        base_url = check_local_url(args.url)
        loads = _loads(args)
        extra_body = _extra_body(args)
        requests = make_requests(
            args.profile,
            args.num_prompts or args.num_requests * len(loads),
            seed=args.seed,
            max_new_tokens=args.max_tokens,
            input_tokens=args.input_tokens,
            render=render_chatml if args.template == "chatml" else render_raw,
            wave=args.num_requests,  # multi-turn: each level sends conversations of its own
        )
    except (ValueError, argparse.ArgumentTypeError) as error:
        parser.error(str(error))
    summaries = run_sweep(
        base_url, args.api, requests, loads,
        label=args.label or args.api, model=args.model, extra_body=extra_body,
    )  # fmt: skip
    print(format_table(summaries))
    if errors := format_errors(summaries):
        print(errors)
    if args.json is not None:
        document = {
            "tool": "tgi-benchmark",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": ["tgi-benchmark", *(sys.argv[1:] if argv is None else argv)],
            "url": base_url,
            "api": args.api,
            "profile": args.profile,
            "max_new_tokens": requests[0].max_new_tokens,
            "extra_body": extra_body,
            "runs": [summary.to_json() for summary in summaries],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.plot is not None:
        plot_throughput({args.label or args.api: summaries}, args.plot)
    return 0 if all(summary.num_ok > 0 for summary in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
