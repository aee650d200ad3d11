"""The benchmark's SSE decoder and event readers, on byte streams in TGI's exact wire format."""

from __future__ import annotations

import json

import pytest

from tgi_server.benchmark.client import (
    RequestRecord,
    SSEDecoder,
    StreamEvent,
    _apply,
    build_payload,
    parse_event,
)
from tgi_server.benchmark.profiles import BenchRequest


def _tgi_event(index: int, text: str, *, last: bool = False) -> bytes:
    body = {
        "index": index,
        "token": {"id": 100 + index, "text": text, "logprob": -0.5, "special": False},
        "generated_text": "full text" if last else None,
        "details": (
            {"finish_reason": "length", "generated_tokens": index, "seed": None, "input_length": 7}
            if last
            else None
        ),
    }
    # Raw UTF-8, as axum writes it: chunking can split a character's bytes.
    return (
        b"data: " + json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
    )


TGI_STREAM = (
    b":\n\n"  # axum keep-alive comment
    + _tgi_event(1, "Hello")
    + b":\n\n"
    + _tgi_event(2, " wor\u00e9ld")
    + _tgi_event(3, "!", last=True)
)


def _decode_in_pieces(stream: bytes, size: int) -> list[str]:
    decoder = SSEDecoder()
    payloads = []
    for start in range(0, len(stream), size):
        payloads += decoder.feed(stream[start : start + size])
    return payloads + decoder.close()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_tgi_stream_decodes_the_same_whatever_the_chunking(size: int) -> None:
    payloads = _decode_in_pieces(TGI_STREAM, size)
    assert [json.loads(p)["index"] for p in payloads] == [1, 2, 3]
    assert json.loads(payloads[1])["token"]["text"] == " wor\u00e9ld"


def test_events_are_released_only_at_the_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n') == []
    assert decoder.feed(b"\n") == ['{"a":1}']


def test_comments_done_crlf_cr_and_multiline_data() -> None:
    stream = (
        b": keep-alive\r\n\r\n"
        b"data: first\r\ndata: second\r\n\r\n"
        b"event: message\rid: 3\rdata:no-space\r\r"
        b"data: [DONE]\n\n"
    )
    for size in (1, 5, len(stream)):
        assert _decode_in_pieces(stream, size) == ["first\nsecond", "no-space", "[DONE]"]


def test_a_cr_at_a_chunk_end_waits_for_a_possible_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"\n") == []  # CRLF is one line end, not two
    assert decoder.feed(b"\r\n") == ["x"]


def test_close_flushes_an_event_missing_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: tail") == []
    assert decoder.close() == ["tail"]


def test_tgi_events_give_tokens_then_the_servers_counts() -> None:
    events = [parse_event("tgi", p) for p in _decode_in_pieces(TGI_STREAM, 5)]
    assert [e.text for e in events] == ["Hello", " wor\u00e9ld", "!"]
    assert [e.done for e in events] == [False, False, True]
    assert events[-1].num_output_tokens == 3
    assert events[-1].num_input_tokens == 7


def test_openai_chat_chunks_role_usage_and_done() -> None:
    role = '{"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}'
    empty = '{"choices":[{"index":0,"delta":{"content":""}}]}'
    token = '{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}'
    usage = '{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}'
    assert parse_event("chat", role) == StreamEvent()
    assert parse_event("chat", empty).text == ""
    assert parse_event("chat", token).text == "Hi"
    assert parse_event("chat", usage) == StreamEvent(num_output_tokens=4, num_input_tokens=9)
    assert parse_event("chat", "[DONE]").done


def test_completions_chunks_and_errors() -> None:
    assert parse_event("completions", '{"choices":[{"index":0,"text":" x"}]}').text == " x"
    error = parse_event("tgi", '{"error":"Input validation error","error_type":"validation"}')
    assert error.error == "Input validation error"
    assert parse_event("chat", "{not json").error is not None
    assert parse_event("chat", "[1, 2]").error is not None


def test_record_times_only_non_empty_tokens_and_prefers_usage() -> None:
    record = RequestRecord(start=10.0)
    _apply(record, StreamEvent(), 10.1)  # role chunk: no token
    _apply(record, StreamEvent(text=""), 10.2)  # special token: counted, not timed
    _apply(record, StreamEvent(text="a"), 10.3)
    _apply(record, StreamEvent(text="b"), 10.5)
    assert record.token_times == [10.3, 10.5]
    assert record.num_token_events == 3
    assert not record.usage_reported
    _apply(record, StreamEvent(num_output_tokens=5, num_input_tokens=2), 10.6)
    assert (record.num_output_tokens, record.num_input_tokens) == (5, 2)
    assert record.usage_reported


def test_payloads_per_api() -> None:
    request = BenchRequest((("user", "Hi there"),), "<s>Hi there", max_new_tokens=12)
    tgi = build_payload("tgi", request, extra_body={"top_n_tokens": 2})
    assert tgi == {
        "inputs": "<s>Hi there",
        "parameters": {"max_new_tokens": 12, "details": True, "top_n_tokens": 2},
        "stream": True,
    }
    chat = build_payload("chat", request, model="m", extra_body={"ignore_eos": True})
    assert chat["messages"] == [{"role": "user", "content": "Hi there"}]
    assert (chat["model"], chat["max_tokens"], chat["ignore_eos"]) == ("m", 12, True)
    assert chat["stream_options"] == {"include_usage": True}
    assert chat["temperature"] == 0.0
    completions = build_payload("completions", request)
    assert completions["prompt"] == "<s>Hi there"
    assert "messages" not in completions
