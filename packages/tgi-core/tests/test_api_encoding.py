"""Response encoding, byte for byte as TGI (serde_json) writes it."""

from __future__ import annotations

import math

import msgspec
import pytest

from tgi_core import api
from tgi_core.api import (
    BestOfSequence,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionComplete,
    ChatCompletionDelta,
    ChatCompletionLogprob,
    ChatCompletionLogprobs,
    ChatCompletionTopLogprob,
    ChatTokenizeResponse,
    Completion,
    CompletionChoice,
    CompletionChunk,
    DeltaFunction,
    DeltaToolCall,
    Details,
    ErrorResponse,
    GenerateResponse,
    Info,
    ModelInfo,
    ModelsList,
    OutputFunction,
    OutputMessage,
    OutputToolCall,
    PrefillToken,
    SimpleToken,
    StreamDetails,
    StreamResponse,
    Token,
    Usage,
    VertexResponse,
    encode_json,
    f32,
)
from tgi_core.contract import FinishReason

TOKEN = Token(id=5, text=" world", logprob=-0.25, special=False)


def details(**fields: object) -> Details:
    base: dict[str, object] = {
        "finish_reason": FinishReason.LENGTH,
        "generated_tokens": 1,
        "seed": None,
        "prefill": [],
        "tokens": [TOKEN],
    }
    return Details(**(base | fields))  # type: ignore[arg-type]


def test_generate_response_omits_details_unless_present() -> None:
    assert encode_json(GenerateResponse(generated_text="Hi")) == b'{"generated_text":"Hi"}'
    # POST / answers a one-element array.
    assert encode_json([GenerateResponse(generated_text="Hi")]) == b'[{"generated_text":"Hi"}]'


def test_details_omit_empty_top_tokens_and_best_of() -> None:
    response = GenerateResponse(
        generated_text=" world",
        details=details(prefill=[PrefillToken(1, "Hello", None), PrefillToken(2, "!", -1.5)]),
    )
    assert encode_json(response) == (
        b'{"generated_text":" world","details":{"finish_reason":"length","generated_tokens":1,'
        b'"seed":null,"prefill":[{"id":1,"text":"Hello","logprob":null},'
        b'{"id":2,"text":"!","logprob":-1.5}],'
        b'"tokens":[{"id":5,"text":" world","logprob":-0.25,"special":false}]}}'
    )


def test_details_with_best_of_and_top_tokens() -> None:
    other = BestOfSequence(
        generated_text="x",
        finish_reason=FinishReason.EOS_TOKEN,
        generated_tokens=1,
        seed=7,
        prefill=[],
        tokens=[TOKEN],
    )
    encoded = encode_json(
        details(
            seed=3,
            best_of_sequences=[other],
            top_tokens=[[TOKEN]],
            finish_reason=FinishReason.EOS_TOKEN,
        )
    )
    assert encoded == (
        b'{"finish_reason":"eos_token","generated_tokens":1,"seed":3,"prefill":[],'
        b'"tokens":[{"id":5,"text":" world","logprob":-0.25,"special":false}],'
        b'"best_of_sequences":[{"generated_text":"x","finish_reason":"eos_token",'
        b'"generated_tokens":1,"seed":7,"prefill":[],'
        b'"tokens":[{"id":5,"text":" world","logprob":-0.25,"special":false}]}],'
        b'"top_tokens":[[{"id":5,"text":" world","logprob":-0.25,"special":false}]]}'
    )


def test_stream_events() -> None:
    first = StreamResponse(index=1, token=TOKEN, generated_text=None, details=None)
    assert encode_json(first) == (
        b'{"index":1,"token":{"id":5,"text":" world","logprob":-0.25,"special":false},'
        b'"generated_text":null,"details":null}'
    )
    last = StreamResponse(
        index=2,
        token=Token(id=0, text="</s>", logprob=-0.5, special=True),
        top_tokens=[TOKEN],
        generated_text="Hello world",
        details=StreamDetails(
            finish_reason=FinishReason.STOP_SEQUENCE, generated_tokens=2, seed=None, input_length=3
        ),
    )
    assert encode_json(last) == (
        b'{"index":2,"token":{"id":0,"text":"</s>","logprob":-0.5,"special":true},'
        b'"top_tokens":[{"id":5,"text":" world","logprob":-0.25,"special":false}],'
        b'"generated_text":"Hello world","details":{"finish_reason":"stop_sequence",'
        b'"generated_tokens":2,"seed":null,"input_length":3}}'
    )


def test_logprobs_print_as_serde_prints_an_f32() -> None:
    # A value computed in float32 and widened to a Python float prints short, as f32 does.
    assert encode_json(Token(1, "a", -0.12300000339746475, False)) == (
        b'{"id":1,"text":"a","logprob":-0.123,"special":false}'
    )
    assert encode_json(ChatCompletionTopLogprob("a", -1.1920928955078125e-07)) == (
        b'{"token":"a","logprob":-1.1920929e-7}'
    )
    assert encode_json(Token(1, "a", float("nan"), False)).endswith(
        b'"logprob":null,"special":false}'
    )
    assert encode_json(PrefillToken(1, "a", float("-inf"))) == b'{"id":1,"text":"a","logprob":null}'
    assert f32(-1e300) == -math.inf
    assert f32(0.1) == 0.1


def test_text_is_raw_utf8_with_json_escapes() -> None:
    token = Token(id=1, text='é"\n\x01', logprob=0.0, special=False)
    assert encode_json(token) == (
        b'{"id":1,"text":"\xc3\xa9\\"\\n\\u0001","logprob":0.0,"special":false}'
    )


def test_chat_completion() -> None:
    completion = ChatCompletion(
        created=1700000000,
        model="org/model",
        system_fingerprint="3.3.6-native",
        choices=[
            ChatCompletionComplete(
                index=0,
                message=OutputMessage(content="Hello"),
                logprobs=ChatCompletionLogprobs(
                    content=[
                        ChatCompletionLogprob(
                            "Hello", -0.5, [ChatCompletionTopLogprob("Hello", -0.5)]
                        )
                    ]
                ),
                finish_reason="stop",
            )
        ],
        usage=Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4),
    )
    assert encode_json(completion) == (
        b'{"object":"chat.completion","id":"","created":1700000000,"model":"org/model",'
        b'"system_fingerprint":"3.3.6-native","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"Hello"},"logprobs":{"content":'
        b'[{"token":"Hello","logprob":-0.5,"top_logprobs":[{"token":"Hello","logprob":-0.5}]}]},'
        b'"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}'
    )


def test_chat_completion_with_a_tool_call() -> None:
    message = OutputMessage(
        tool_calls=[
            OutputToolCall(
                id="0", function=OutputFunction(name="get_weather", arguments='{"city":"Paris"}')
            )
        ]
    )
    assert encode_json(message) == (
        b'{"role":"assistant","tool_calls":[{"id":"0","type":"function","function":'
        b'{"description":null,"name":"get_weather","arguments":"{\\"city\\":\\"Paris\\"}"}}]}'
    )


def test_chat_chunks() -> None:
    chunk = ChatCompletionChunk(
        created=1,
        model="m",
        system_fingerprint="fp",
        choices=[
            ChatCompletionChoice(
                index=0,
                delta=ChatCompletionDelta(content=""),
                logprobs=None,
                finish_reason=None,
            )
        ],
    )
    assert encode_json(chunk) == (
        b'{"object":"chat.completion.chunk","id":"","created":1,"model":"m",'
        b'"system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant",'
        b'"content":""},"logprobs":null,"finish_reason":null}],"usage":null}'
    )
    usage_chunk = ChatCompletionChunk(
        created=1, model="m", system_fingerprint="fp", choices=[], usage=Usage(1, 2, 3)
    )
    assert encode_json(usage_chunk).endswith(
        b'"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}'
    )
    tool_delta = ChatCompletionDelta(
        tool_calls=[
            DeltaToolCall(index=0, id="0", function=DeltaFunction(name=None, arguments='{"a'))
        ]
    )
    assert encode_json(tool_delta) == (
        b'{"role":"assistant","tool_calls":[{"index":0,"id":"0","type":"function",'
        b'"function":{"name":null,"arguments":"{\\"a"}}]}'
    )


def test_completions() -> None:
    chunk = CompletionChunk(
        created=2,
        choices=[CompletionChoice(index=1, text=" a", finish_reason="")],
        model="m",
        system_fingerprint="fp",
    )
    assert encode_json(chunk) == (
        b'{"object":"text_completion","id":"","created":2,"choices":[{"index":1,"text":" a",'
        b'"logprobs":null,"finish_reason":""}],"model":"m","system_fingerprint":"fp"}'
    )
    final = Completion(
        created=2,
        model="m",
        system_fingerprint="fp",
        choices=[CompletionChoice(index=0, text="a", finish_reason="eos_token")],
        usage=Usage(1, 1, 2),
    )
    assert encode_json(final) == (
        b'{"object":"text_completion","id":"","created":2,"model":"m","system_fingerprint":"fp",'
        b'"choices":[{"index":0,"text":"a","logprobs":null,"finish_reason":"eos_token"}],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
    )


def test_info_and_models() -> None:
    info = Info(
        model_id="org/model",
        max_concurrent_requests=128,
        max_best_of=2,
        max_stop_sequences=4,
        max_input_tokens=4095,
        max_total_tokens=4096,
        validation_workers=2,
        max_client_batch_size=4,
        version="3.3.6",
    )
    assert encode_json(info) == (
        b'{"model_id":"org/model","model_sha":null,"model_pipeline_tag":null,'
        b'"max_concurrent_requests":128,"max_best_of":2,"max_stop_sequences":4,'
        b'"max_input_tokens":4095,"max_total_tokens":4096,"validation_workers":2,'
        b'"max_client_batch_size":4,"router":"text-generation-router","version":"3.3.6",'
        b'"sha":null,"docker_label":null,'
        # ours, after TGI's: what computes (set by the engine when a worker connects)
        b'"model_dtype":null,"model_device_type":null,"compute_path":null,"warmup_seconds":null,'
        b'"lora_adapters":[]}'
    )
    models = ModelsList(data=[ModelInfo(id="org/model", owned_by="org/model")])
    assert encode_json(models) == (
        b'{"object":"list","data":[{"id":"org/model","object":"model","created":0,'
        b'"owned_by":"org/model"}]}'
    )


def test_tokenize_error_and_vertex_bodies() -> None:
    tokens = [SimpleToken(1, "Hi", 0, 2)]
    assert encode_json(tokens) == b'[{"id":1,"text":"Hi","start":0,"stop":2}]'
    chat_tokens = ChatTokenizeResponse(tokenize_response=tokens, templated_text="Hi")
    assert encode_json(chat_tokens) == (
        b'{"tokenize_response":[{"id":1,"text":"Hi","start":0,"stop":2}],"templated_text":"Hi"}'
    )
    assert encode_json(ErrorResponse(error="e", error_type="t")) == (
        b'{"error":"e","error_type":"t"}'
    )
    assert encode_json(VertexResponse(predictions=["a"])) == b'{"predictions":["a"]}'


@pytest.mark.parametrize(
    "type_",
    [
        getattr(api, name)
        for name in api.__all__
        if isinstance(getattr(api, name), type)
        and issubclass(getattr(api, name), msgspec.Struct)
        and name != "VertexRequest"  # untagged instance union: schema written by hand
    ],
)
def test_every_type_has_an_openapi_schema(type_: type) -> None:
    schemas, components = msgspec.json.schema_components([type_])
    assert schemas[0]["$ref"].endswith(type_.__name__)
    assert type_.__doc__
    assert components[type_.__name__]["title"] == type_.__name__
