"""The load generator against a real HTTP server speaking TGI's and OpenAI's SSE formats.

The server below is a real ``http.server`` on 127.0.0.1 (HTTP/1.1, keep-alive, chunked
streams) that answers like TGI: exact event framing, keep-alive comments, ``[DONE]`` on the
OpenAI routes, a token every ``token_delay`` seconds. It records what it was sent and how many
requests it had in flight at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tgi_server.benchmark.cli import main
from tgi_server.benchmark.client import Api
from tgi_server.benchmark.profiles import make_requests
from tgi_server.benchmark.report import summarize
from tgi_server.benchmark.runner import LoadSpec, check_local_url, run_load, run_load_sync


class FakeTGI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.token_delay = 0.0
        self.drop_next = 0  # close this many connections without answering
        self.bodies: list[dict[str, Any]] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else small SSE writes wait ~40 ms for delayed ACKs
    server: FakeTGI

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            if self.server.drop_next:
                self.server.drop_next -= 1
                self.close_connection = True
                return
            self.server.bodies.append(body)
            self.server.active += 1
            self.server.max_active = max(self.server.max_active, self.server.active)
        try:
            self._answer(body)
        finally:
            with self.server.lock:
                self.server.active -= 1

    def _answer(self, body: dict[str, Any]) -> None:
        if body.get("inputs") == "fail" or body.get("prompt") == "fail":
            data = b'{"error":"Input validation error: fail","error_type":"validation"}'
            self.send_response(422)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(b":\n\n")  # keep-alive comment before anything else
        events = {"/generate_stream": _tgi_events, "/v1/chat/completions": _chat_events}
        for event in events.get(self.path, _completion_events)(body):
            time.sleep(self.server.token_delay)
            self._chunk(b"data: " + event.encode() + b"\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _dump(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def _tgi_events(body: dict[str, Any]) -> Iterator[str]:
    count = body["parameters"]["max_new_tokens"]
    for index in range(1, count + 1):
        last = index == count
        details = {"finish_reason": "length", "generated_tokens": count, "seed": None,
                   "input_length": len(body["inputs"].split())}  # fmt: skip
        yield _dump({
            "index": index,
            "token": {"id": index, "text": f" t{index}", "logprob": -0.1, "special": False},
            "generated_text": "text" if last else None,
            "details": details if last else None,
        })  # fmt: skip


def _chat_events(body: dict[str, Any]) -> Iterator[str]:
    yield _dump({"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]})
    for index in range(body["max_tokens"]):
        yield _dump({"choices": [{"index": 0, "delta": {"content": f" c{index}"}}]})
    usage = {"prompt_tokens": 3, "completion_tokens": body["max_tokens"], "total_tokens": 0}
    yield _dump({"choices": [], "usage": usage})
    yield "[DONE]"


def _completion_events(body: dict[str, Any]) -> Iterator[str]:
    for index in range(body["max_tokens"]):
        yield _dump({"choices": [{"index": 0, "text": f" p{index}", "finish_reason": ""}]})
    yield "[DONE]"  # no usage: tokens are counted from events


@pytest.fixture
def server() -> Iterator[FakeTGI]:
    fake = FakeTGI()
    thread = threading.Thread(target=fake.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.shutdown()
    fake.server_close()


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080",
        "http://10.0.0.1:8080",
        "http://192.168.1.2",
        "http://127.0.0.2:80",
        "http://[::1]:80",
        "https://127.0.0.1:8080",
        "http://user:pw@127.0.0.1:80",
        "http://127.0.0.1:80/?x=1",
        "http://127.0.0.1.example.com",
    ],
)
def test_only_127_0_0_1_is_a_target(url: str) -> None:
    with pytest.raises(ValueError, match="refusing"):
        check_local_url(url)


def test_the_guard_runs_before_any_request() -> None:
    requests = make_requests("chat", 1)
    spec = LoadSpec(num_requests=1, max_duration_s=1.0, concurrency=1)
    with pytest.raises(ValueError, match=r"only http://127\.0\.0\.1"):
        asyncio.run(run_load("http://example.com", "tgi", requests, spec))
    assert check_local_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"


def test_load_spec_needs_exactly_one_shape() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        LoadSpec(num_requests=1, max_duration_s=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        LoadSpec(num_requests=1, max_duration_s=1.0, concurrency=1, request_rate=1.0)
    with pytest.raises(ValueError):
        LoadSpec(num_requests=0, max_duration_s=1.0, concurrency=1)


@pytest.mark.parametrize("api", ["tgi", "chat", "completions"])
def test_closed_loop_keeps_concurrency_and_counts_tokens(server: FakeTGI, api: Api) -> None:
    server.token_delay = 0.01
    requests = make_requests("chat", 6, max_new_tokens=5)
    spec = LoadSpec(num_requests=12, max_duration_s=30.0, concurrency=4, num_warmup=1)
    result = run_load_sync(server.url, api, requests, spec)
    assert server.max_active == 4
    assert len(server.bodies) == 13  # one warm-up
    assert (result.num_sent, result.num_cancelled, len(result.records)) == (12, 0, 12)
    assert all(record.ok and record.num_output_tokens == 5 for record in result.records)
    assert all(len(record.token_times) == 5 for record in result.records)
    assert all(record.usage_reported == (api != "completions") for record in result.records)
    summary = summarize(result)
    assert summary.itl.p50 >= 0.009
    assert summary.ttft.p50 >= 0.009  # the keep-alive comment is not a token
    assert summary.e2e.p50 > summary.ttft.p50


def test_request_i_uses_prompt_first_index_plus_i(server: FakeTGI) -> None:
    requests = make_requests("chat", 5, max_new_tokens=1)
    spec = LoadSpec(num_requests=3, max_duration_s=10.0, concurrency=1)
    run_load_sync(server.url, "tgi", requests, spec, first_index=3)
    assert [body["inputs"] for body in server.bodies] == [r.prompt for r in (requests * 2)[3:6]]


def test_the_time_limit_cuts_in_flight_requests(server: FakeTGI) -> None:
    server.token_delay = 0.2
    requests = make_requests("chat", 2, max_new_tokens=50)  # 10 s each
    spec = LoadSpec(num_requests=100, max_duration_s=0.6, concurrency=2)
    started = time.perf_counter()
    result = run_load_sync(server.url, "tgi", requests, spec)
    assert time.perf_counter() - started < 3.0
    assert (result.num_sent, result.num_cancelled, result.records) == (2, 2, [])
    assert 0.6 <= result.duration_s < 2.0


def test_poisson_rate_sends_every_request(server: FakeTGI) -> None:
    requests = make_requests("classification", 3, max_new_tokens=2)
    spec = LoadSpec(num_requests=10, max_duration_s=30.0, request_rate=40.0, seed=3)
    result = run_load_sync(server.url, "chat", requests, spec)
    assert (result.num_sent, len(result.records), result.num_cancelled) == (10, 10, 0)
    assert all(record.ok for record in result.records)
    assert summarize(result).request_rate == 40.0


def test_errors_and_a_dropped_connection(server: FakeTGI) -> None:
    fail = make_requests("chat", 1, max_new_tokens=2)[0]
    fail = type(fail)(fail.messages, "fail", 2)
    spec = LoadSpec(num_requests=1, max_duration_s=10.0, concurrency=1)
    [record] = run_load_sync(server.url, "tgi", [fail], spec).records
    assert record.status == 422
    assert record.error is not None and record.error.startswith("HTTP 422: ")
    assert not record.ok
    server.drop_next = 1  # a stale keep-alive connection: sent again once
    [record] = run_load_sync(
        server.url, "tgi", make_requests("chat", 1, max_new_tokens=2), spec
    ).records
    assert record.ok and record.num_output_tokens == 2
    server.drop_next = 2  # dropped twice: an error, not an endless retry
    [record] = run_load_sync(
        server.url, "tgi", make_requests("chat", 1, max_new_tokens=2), spec
    ).records
    assert record.error is not None and "RemoteProtocolError" in record.error


def test_cli_sweeps_levels_with_fresh_prompts(
    server: FakeTGI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    argv = ["--url", server.url, "--api", "chat", "--concurrency", "1,2", "--num-requests", "3",
            "--max-tokens", "4", "--ignore-eos", "--label", "fake", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["run", "load"]
    assert [line.split()[:3] for line in table[1:]] == [
        ["fake", "c=1", "3/3"],
        ["fake", "c=2", "3/3"],
    ]
    document = json.loads(out.read_text())
    assert [run["concurrency"] for run in document["runs"]] == [1, 2]
    assert all(run["mean_output_tokens"] == 4 for run in document["runs"])
    assert document["extra_body"] == {"ignore_eos": True}
    measured = [b for b in server.bodies if b["messages"][0]["content"] != "Hello!"]
    assert len(measured) == 6
    assert len({json.dumps(b["messages"]) for b in measured}) == 6  # no prompt served twice
    assert all(b["ignore_eos"] is True and b["max_tokens"] == 4 for b in measured)


def test_cli_refuses_other_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--url", "http://10.1.2.3:8080"])
    assert exit_info.value.code == 2
    assert "only http://127.0.0.1" in capsys.readouterr().err
