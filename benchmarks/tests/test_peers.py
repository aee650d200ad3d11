"""The benchmark against real peers: llama.cpp's llama-server and the transformers baseline.

Slow: each test starts a real server on the embedded SmolLM2 GGUF. The llama.cpp tests build
``llama-server`` with ``benchmarks/peers/build_llama_server.sh`` when it is not built yet
(about 10 minutes on 2 cores, once per machine: the binary is cached in the user's cache).
These tests belong to the benchmark environment (``hatch run bench:test``), not to
``hatch test``: a contributor's test run builds no third-party C++.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tgi_server.benchmark.client import Api, RequestRecord
from tgi_server.benchmark.profiles import make_requests, render_chatml
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
    command = [str(llama_server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "-t", "2", "-np", "2", "-c", "2048", "--cont-batching", "--no-webui"]  # fmt: skip
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


@pytest.mark.slow
def test_compare_writes_reports_and_stops_its_children(
    compare: ModuleType, tmp_path: Path, llama_server: Path
) -> None:
    argv = ["--peers", "llama.cpp", "--concurrency", "2", "--num-requests", "2",
            "--max-tokens", "4", "--skip-limits", "--out", str(tmp_path)]  # fmt: skip
    assert compare.main(argv) == 0
    [report] = tmp_path.glob("compare-*.json")
    document = json.loads(report.read_text())
    runs = document["peers"]["llama.cpp"]["runs"]
    # 32 slots, then as many slots as clients
    assert [(run["label"], run["concurrency"]) for run in runs] == [
        ("llama.cpp np=32", 2), ("llama.cpp np=2", 2),
    ]  # fmt: skip
    assert all(run["cpu"]["server_cores"] > 0 for run in runs)  # its session was measured
    assert all(run["num_ok"] == 2 and run["mean_output_tokens"] == 4 for run in runs)
    markdown = report.with_suffix(".md").read_text()
    assert "## Best configuration per server and level" in markdown
    assert document["machine"]["usable_cores"] >= 1
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, check=False)
    assert leftover.stdout == b""  # every child was stopped (their logs live under tmp_path)


def test_chatml_rendering_matches_the_models_template(compare: ModuleType, gguf: Path) -> None:
    """The default rendering of tgi/completions prompts is the model's own template, minus the
    system turn SmolLM2 adds by default (compare.py renders with the real template)."""
    tokenizer = compare.Tokenizer(str(gguf.parent), gguf.name)
    messages = (("system", "Be brief."), ("user", "Hi there"))
    assert render_chatml(messages) == tokenizer.render(messages)
