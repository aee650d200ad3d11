"""The benchmark against real peers: llama.cpp's llama-server and the transformers baselines.

Slow: each test starts a real server on the embedded SmolLM2 GGUF. The llama.cpp tests build
``llama-server`` with ``benchmarks/peers/build_llama_server.sh`` when it is not built yet
(about 10 minutes on 2 cores, once per machine: the binary is cached in the user's cache).
These tests belong to the benchmark environment (``hatch run bench:test``), not to
``hatch test``: a contributor's test run builds no third-party C++.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tgi_server.benchmark.client import Api, RequestRecord
from tgi_server.benchmark.profiles import make_requests, render_chatml
from tgi_server.benchmark.report import Distribution, Summary
from tgi_server.benchmark.runner import LoadSpec, run_load_sync

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def llama_server() -> Path:
    """The llama-server binary, built from the llama-cpp-python sdist on first use."""
    script = ROOT / "benchmarks" / "peers" / "build_llama_server.sh"
    subprocess.run(["bash", str(script)], check=True, timeout=1800, capture_output=True)
    binary: Path = _compare().LLAMA_SERVER
    assert binary.exists()
    return binary


def _compare() -> ModuleType:
    """benchmarks/compare.py, loaded from its path (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compare() -> Iterator[ModuleType]:
    yield _compare()
    sys.modules.pop("compare", None)


@pytest.fixture(scope="module")
def gguf(compare: ModuleType) -> Path:
    path: Path = compare._default_gguf()
    return path


def _generate(url: str, api: Api, num_tokens: int, concurrency: int) -> list[RequestRecord]:
    requests = make_requests("chat", 4, max_new_tokens=num_tokens, seed=1)
    spec = LoadSpec(num_requests=4, max_duration_s=120.0, concurrency=concurrency, num_warmup=1)
    result = run_load_sync(url, api, requests, spec, extra_body={"ignore_eos": True})
    return list(result.records)


@pytest.mark.slow
def test_llama_server_streams_exactly_max_tokens(
    compare: ModuleType, gguf: Path, tmp_path: Path, llama_server: Path
) -> None:
    port = compare.free_port()
    # --no-repack as compare.py's Q4_1 peer: llama.cpp crashes repacking Q4_1 for AMX
    command = [str(llama_server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "-t", "2", "-np", "2", "-c", "2048", "--cont-batching", "--no-webui",
               "--no-repack"]  # fmt: skip
    with compare.child_server(command, port, tmp_path / "llama.log", 120.0) as (url, _):
        records = _generate(url, "chat", 16, 2) + _generate(url, "completions", 16, 2)
    assert len(records) == 8
    for record in records:
        assert record.ok, record.error
        assert record.usage_reported
        assert record.num_output_tokens == 16  # ignore_eos honoured, usage read
        assert record.num_input_tokens is not None and record.num_input_tokens > 50
        assert 0 < record.token_times[0] - record.start < record.end - record.start
        assert len(record.token_times) >= 12  # roughly one event per token


@pytest.mark.slow
def test_transformers_baseline_streams_one_request_at_a_time(
    compare: ModuleType, gguf: Path, tmp_path: Path
) -> None:
    port = compare.free_port()
    script = ROOT / "benchmarks" / "peers" / "transformers_server.py"
    command = [sys.executable, str(script), "--port", str(port),
               "--model-dir", str(gguf.parent), "--gguf-file", gguf.name]  # fmt: skip
    with compare.child_server(command, port, tmp_path / "transformers.log", 300.0) as (url, _):
        records = _generate(url, "chat", 6, concurrency=2)
    assert all(record.ok and record.num_output_tokens == 6 for record in records)
    spans = sorted((record.token_times[0], record.end) for record in records)
    # The lock serialises generation: no request streams while another one does.
    assert all(later[0] >= earlier[1] - 0.05 for earlier, later in itertools.pairwise(spans))


@dataclass(frozen=True)
class Answer:
    text: str
    usage: dict[str, int]
    finish: str
    first_s: float  # when its first text arrived (perf_counter)
    end_s: float


def _chat(url: str, content: str, max_tokens: int, ignore_eos: bool = True) -> Answer:
    """One streamed greedy chat completion, read event by event."""
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": ignore_eos, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    pieces: list[str] = []
    first_s, usage, finish = 0.0, {}, ""
    route = f"{url}/v1/chat/completions"
    with httpx.stream("POST", route, json=body, timeout=120.0, trust_env=False) as response:
        assert response.status_code == httpx.codes.OK
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line.removeprefix("data: "))
            usage = event.get("usage") or usage
            for choice in event["choices"]:
                if piece := choice["delta"].get("content"):
                    first_s = first_s or time.perf_counter()
                    pieces.append(piece)
                finish = choice["finish_reason"] or finish
    return Answer("".join(pieces), usage, finish, first_s, time.perf_counter())


def _leave_early(url: str) -> None:
    """Starts a long stream and hangs up after its first events."""
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": True}  # fmt: skip
    route = f"{url}/v1/chat/completions"
    with httpx.stream("POST", route, json=body, timeout=120.0, trust_env=False) as response:
        events = (line for line in response.iter_lines() if line.startswith("data: "))
        next(events), next(events)


@contextlib.contextmanager
def _transformers_peer(
    compare: ModuleType, gguf: Path, log: Path, script: str, *options: str
) -> Iterator[tuple[str, int]]:
    port = compare.free_port()
    command = [sys.executable, str(ROOT / "benchmarks" / "peers" / script), "--port", str(port),
               "--model-dir", str(gguf.parent), "--gguf-file", gguf.name, *options]  # fmt: skip
    with compare.child_server(command, port, log, 300.0) as server:
        yield server


# Prompts whose greedy answers run past these lengths, so that ignore_eos changes nothing...
LONG_ANSWERS = [("Tell me a story about a cat.", 12), ("Explain how rain forms.", 7),
                ("Describe the sea in detail.", 15), ("Write a poem about trees.", 10)]  # fmt: skip
# ... and one that ends on EOS after 10 tokens: without ignore_eos it stops there.
SHORT_ANSWER = ("Hi there", 24)


@pytest.mark.slow
def test_batched_transformers_batches_and_answers_as_the_serial_peer(
    compare: ModuleType, gguf: Path, tmp_path: Path
) -> None:
    # float32 on both sides: in bf16 a batch rounds its sums differently from one request
    # alone, and greedy answers drift apart after a few tokens (seen here from the 9th).
    # One thread: both peers run beside other work on a shared machine.
    options = ("--dtype", "float32", "--threads", "1")
    with _transformers_peer(compare, gguf, tmp_path / "batched.log",
                            "transformers_batched_server.py", *options) as (url, pid):  # fmt: skip
        with ThreadPoolExecutor(len(LONG_ANSWERS)) as pool:
            batched = list(pool.map(lambda prompt: _chat(url, *prompt), LONG_ANSWERS))
        _leave_early(url)
        time.sleep(1.0)  # the server notices at its next writes
        before = compare.cpu_seconds(pid)[1]
        time.sleep(2.0)
        # its 200 tokens would keep the server busy for seconds: generation stopped with it
        assert compare.cpu_seconds(pid)[1] - before < 0.5
        short = _chat(url, *SHORT_ANSWER, ignore_eos=False)
        body = {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.7}
        refused = httpx.post(f"{url}/v1/chat/completions", json=body, trust_env=False)
    with _transformers_peer(compare, gguf, tmp_path / "serial.log",
                            "transformers_server.py", *options) as (url, _):  # fmt: skip
        serial = [_chat(url, *prompt) for prompt in LONG_ANSWERS]
        serial_short = _chat(url, *SHORT_ANSWER, ignore_eos=False)
    for (_, max_tokens), answer, reference in zip(LONG_ANSWERS, batched, serial, strict=True):
        assert answer.usage["completion_tokens"] == max_tokens
        assert (answer.finish, answer.text) == ("length", reference.text)
    assert short.usage["completion_tokens"] == serial_short.usage["completion_tokens"] < 24
    assert (short.finish, short.text) == ("stop", serial_short.text)
    # One batch: every request streamed its first text before any of them ended.
    assert max(answer.first_s for answer in batched) < min(answer.end_s for answer in batched)
    assert (refused.status_code, refused.json()["error"]) == (
        422, "this peer decodes greedily: `temperature` must be 0"
    )  # fmt: skip


@pytest.mark.slow
def test_compare_writes_reports_and_stops_its_children(
    compare: ModuleType, tmp_path: Path, llama_server: Path
) -> None:
    argv = ["--peers", "llama.cpp-q4_1", "--concurrency", "2", "--num-requests", "2",
            "--max-tokens", "4", "--repeats", "2", "--skip-limits",
            "--out", str(tmp_path)]  # fmt: skip
    assert compare.main(argv) == 0
    [report] = tmp_path.glob("compare-*.json")
    document = json.loads(report.read_text())
    peer = document["peers"]["llama.cpp-q4_1"]
    # Per round: 32 slots, then as many slots as clients
    assert [(run["round"], run["label"], run["concurrency"]) for run in peer["runs"]] == [
        (1, "llama.cpp-q4_1 np=32", 2), (1, "llama.cpp-q4_1 np=2", 2),
        (2, "llama.cpp-q4_1 np=32", 2), (2, "llama.cpp-q4_1 np=2", 2),
    ]  # fmt: skip
    assert all(run["cpu"]["server_cores"] > 0 for run in peer["runs"])  # its session measured
    assert all(run["num_ok"] == 2 and run["mean_output_tokens"] == 4 for run in peer["runs"])
    assert "-np 2 " in peer["commands"]["llama.cpp-q4_1 np=2"]
    assert document["versions"]["llama.cpp"].startswith("version: ")  # with its commit
    markdown = report.with_suffix(".md").read_text()
    assert "## Best configuration per server and level" in markdown
    assert "| llama.cpp-q4_1 np=2 | 2 | 2 |" in markdown  # two runs, median and spread
    assert document["machine"]["usable_cores"] >= 1
    assert document["machine"]["cpu_flags"]
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, check=False)
    assert leftover.stdout == b""  # every child was stopped (their logs live under tmp_path)


@pytest.mark.slow
def test_compare_counts_prefix_cache_hits_with_the_cache_on_and_none_off(
    compare: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both peers as compare.py runs them, made quick to start: no warmup, short contexts.
    quick = ("--max-input-tokens", "1024", "--max-total-tokens", "1100")
    for name in ("ours", "ours-no-prefix-cache"):
        peer = compare.PEERS[name]
        monkeypatch.setitem(compare.PEERS, name, dataclasses.replace(
            peer, command=(*peer.command, *quick), env={**peer.env, "WARMUP_ENABLED": "false"}
        ))  # fmt: skip
    argv = ["--peers", "ours,ours-no-prefix-cache", "--profile", "multi-turn",
            "--concurrency", "2", "--num-requests", "8", "--max-tokens", "4", "--repeats", "1",
            "--skip-limits", "--ready-timeout", "120", "--out", str(tmp_path)]  # fmt: skip
    assert compare.main(argv) == 0
    [report] = tmp_path.glob("compare-*.json")
    peers = json.loads(report.read_text())["peers"]
    [cached], [uncached] = peers["ours"]["runs"], peers["ours-no-prefix-cache"]["runs"]
    assert cached["num_ok"] == uncached["num_ok"] == 8
    # 2 conversations of 4 turns: turns 1-3 find at least the ~240-token system prompt
    assert cached["prefix_cache"]["hit_tokens"] >= 6 * 224
    assert cached["prefix_cache"]["query_tokens"] > cached["prefix_cache"]["hit_tokens"]
    assert uncached["prefix_cache"] == {"hit_tokens": 0, "query_tokens": 0, "hit_ratio": None}
    assert (
        "PREFIX_CACHING=false " in peers["ours-no-prefix-cache"]["commands"]["ours-no-prefix-cache"]
    )
    markdown = report.with_suffix(".md").read_text()
    assert "| 1 | ours-no-prefix-cache | c=2 | 0 | 0 | off (no lookups) |" in markdown
    assert f"| 1 | ours | c=2 | {cached['prefix_cache']['hit_tokens']} |" in markdown


def test_prefix_cache_counters_read_from_the_servers_metrics_text(compare: ModuleType) -> None:
    import msgspec
    from server_metrics import PrefixCache, parse_prefix_cache

    from tgi_core.engine_stats import SchedulerStats
    from tgi_server.ipc.messages import EngineStatus
    from tgi_server.metrics import engine_families, render_text

    def metrics(hit_tokens: int, query_tokens: int) -> str:
        counters = {name: 0 for name in SchedulerStats.__struct_fields__ if name != "steps"}
        counters |= {"prefix_cache_hit_tokens": hit_tokens,
                     "prefix_cache_query_tokens": query_tokens}  # fmt: skip
        status = EngineStatus(True, False, 0, 1, 0, msgspec.convert(counters, SchedulerStats))
        return render_text(engine_families(status, None)).decode()

    before, after = parse_prefix_cache(metrics(32, 100)), parse_prefix_cache(metrics(96, 300))
    assert (before, after) == (PrefixCache(32, 100), PrefixCache(96, 300))
    used = PrefixCache.between(before, after)
    assert used == PrefixCache(64, 200) and used.hit_ratio == 0.32
    assert PrefixCache(0, 0).hit_ratio is None  # the cache is off: nothing looked up
    assert PrefixCache.between(None, after) is None
    assert parse_prefix_cache(render_text(engine_families(None, None)).decode()) is None


def test_chatml_rendering_matches_the_models_template(compare: ModuleType, gguf: Path) -> None:
    """The default rendering of tgi/completions prompts is the model's own template, minus the
    system turn SmolLM2 adds by default (compare.py renders with the real template)."""
    tokenizer = compare.Tokenizer(str(gguf.parent), gguf.name)
    messages = (("system", "Be brief."), ("user", "Hi there"))
    assert render_chatml(messages) == tokenizer.render(messages)


def test_repeats_run_every_peer_once_per_round(compare: ModuleType) -> None:
    assert compare.schedule(["ours", "llama.cpp-f16"], 3) == [
        (0, "ours"), (0, "llama.cpp-f16"), (1, "ours"), (1, "llama.cpp-f16"),
        (2, "ours"), (2, "llama.cpp-f16"),
    ]  # fmt: skip


def _summary(label: str, tok_s: float, itl_p50: float) -> Summary:
    latency = Distribution(itl_p50, itl_p50, itl_p50, itl_p50)
    return Summary(label, 32, None, 8, 8, 0, 0, 1.0, 8.0, tok_s, 100.0, 64.0, latency, latency,
                   latency, None)  # fmt: skip


def test_best_configuration_is_the_highest_median_with_its_spread(compare: ModuleType) -> None:
    from compare_report import Outcome, Spread, best_rows

    outcome = Outcome("llama.cpp-f16")
    # np=32 has the best single run (300) but the lower median (100 against 150)
    for tok_s_32, tok_s_8 in ((100.0, 150.0), (300.0, 140.0), (90.0, 160.0)):
        outcome.summaries += [_summary("np=32", tok_s_32, 0.1), _summary("np=8", tok_s_8, 0.2)]
    [(level, row)] = best_rows(outcome).items()
    assert (level, row.label, row.runs) == (32, "np=8", 3)
    assert (row.tok_s.median, row.tok_s.low, row.tok_s.high) == (150.0, 140.0, 160.0)
    assert row.tok_s.apart_from(Spread.of([170.0, 180.0]))
    assert not row.tok_s.apart_from(Spread.of([155.0, 400.0]))  # overlap: no claim holds


@pytest.mark.parametrize("precision", ["f16", "bf16"])
def test_precision_conversion_keeps_metadata_and_dequantized_weights(
    compare: ModuleType, tmp_path: Path, precision: str
) -> None:
    import gguf
    import numpy as np
    from precisions import convert

    rng = np.random.default_rng(0)
    weight, norm = rng.standard_normal((4, 64), dtype=np.float32), rng.random(64, np.float32)
    source = tmp_path / "tiny.Q4_1.gguf"
    writer = gguf.GGUFWriter(source, arch="llama")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_block_count(1)
    writer.add_token_list(["<s>", "hi"])
    writer.add_chat_template("{{ messages }}")
    quantized = gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q4_1)
    writer.add_tensor("blk.0.ffn_up.weight", quantized, raw_shape=quantized.shape,
                      raw_dtype=gguf.GGMLQuantizationType.Q4_1)  # fmt: skip
    writer.add_tensor("blk.0.attn_norm.weight", norm)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    convert(source, target := tmp_path / "tiny.out.gguf", precision)
    before, after = gguf.GGUFReader(source), gguf.GGUFReader(target)
    changed = {key for key, field in after.fields.items()
               if key.startswith(("general.", "tokenizer.", "llama."))
               and field.contents() != before.fields[key].contents()}  # fmt: skip
    assert changed == {"general.file_type"}
    assert after.fields["general.file_type"].contents() == (1 if precision == "f16" else 32)
    [up, attn_norm] = after.tensors
    assert up.tensor_type.name == precision.upper()
    assert attn_norm.tensor_type == gguf.GGMLQuantizationType.F32
    assert np.array_equal(attn_norm.data, norm)
    original = gguf.quants.dequantize(quantized, gguf.GGMLQuantizationType.Q4_1)
    converted = gguf.quants.dequantize(up.data, up.tensor_type)
    assert converted.shape == original.shape == (4, 64)
    # the Q4_1 values, rounded once to 11 (f16) or 8 (bf16) significant bits
    tolerance = 2.0**-11 if precision == "f16" else 2.0**-8
    assert np.allclose(converted, original, rtol=tolerance, atol=0)
    assert not np.array_equal(converted, weight)  # the quantized weights, not the originals
