"""Request decoding: TGI's defaults and unions, and axum's 400/422 plain-text rejections."""

from __future__ import annotations

import pytest

from tgi_core.api import (
    UNSUPPORTED_MEDIA_TYPE_MESSAGE,
    BodyError,
    ChatRequest,
    CompatGenerateRequest,
    CompletionRequest,
    GenerateRequest,
    ImageUrlChunk,
    TextChunk,
    ToolChoiceFunction,
    VertexInstance,
    decode_body,
    decode_invocations,
    decode_vertex,
)

SYNTAX = "Failed to parse the request body as JSON: "
DATA = "Failed to deserialize the JSON body into the target type: "


def body_error(data: bytes, type_: type) -> BodyError:
    with pytest.raises(BodyError) as info:
        decode_body(data, type_)
    return info.value


# --- defaults -----------------------------------------------------------------------------


def test_omitted_parameters_sample_but_an_empty_object_does_not() -> None:
    # TGI's default_parameters() sets do_sample when `parameters` is missing altogether.
    assert decode_body(b'{"inputs":"Hi"}', GenerateRequest).parameters.do_sample is True
    explicit = decode_body(b'{"inputs":"Hi","parameters":{}}', GenerateRequest)
    assert explicit.parameters.do_sample is False
    assert explicit.parameters.stop == ()
    assert explicit.parameters.max_new_tokens is None
    assert explicit.add_special_tokens is True


def test_unknown_fields_are_ignored_and_add_special_tokens_is_not_read() -> None:
    request = decode_body(
        b'{"inputs":"Hi","add_special_tokens":false,"extra":1,"parameters":{"foo":2}}',
        GenerateRequest,
    )
    assert request.add_special_tokens is True


def test_compat_request_has_stream() -> None:
    assert decode_body(b'{"inputs":"x"}', CompatGenerateRequest).stream is False
    assert decode_body(b'{"inputs":"x","stream":true}', CompatGenerateRequest).stream is True


def test_grammar_shapes() -> None:
    for grammar in (
        b'{"type":"json","value":{"properties":{}}}',
        b'{"type":"json_object","value":"{\\"properties\\":{}}"}',
        b'{"type":"regex","value":"[a-z]+"}',
        b'{"type":"json_schema","value":{"name":"x","schema":{"properties":{}}}}',
    ):
        body = b'{"inputs":"x","parameters":{"grammar":' + grammar + b"}}"
        assert decode_body(body, GenerateRequest).parameters.grammar is not None


# --- chat and completion unions ----------------------------------------------------------------


def test_chat_message_content_forms() -> None:
    body = (
        b'{"messages":[{"role":"user","content":"hi"},'
        b'{"role":"user","content":[{"type":"text","text":"a"},'
        b'{"type":"image_url","image_url":{"url":"data:image/png;base64,AA=="}}]},'
        b'{"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function",'
        b'"function":{"name":"f","arguments":"{}"}}]}]}'
    )
    request = decode_body(body, ChatRequest)
    first, second, third = request.messages
    assert first.content == "hi"
    assert isinstance(second.content, tuple)
    assert isinstance(second.content[0], TextChunk)
    assert isinstance(second.content[1], ImageUrlChunk)
    assert third.tool_calls is not None
    assert third.tool_calls[0].function.schema == "{}"


def test_chat_stop_alias_and_tool_choice() -> None:
    request = decode_body(
        b'{"messages":[],"stop":"x","max_completion_tokens":3,'
        b'"tool_choice":{"type":"function","function":{"name":"f"}}}',
        ChatRequest,
    )
    assert request.stop_sequences == ("x",)
    assert request.max_new_tokens == 3
    assert isinstance(request.tool_choice, ToolChoiceFunction)
    listed = decode_body(b'{"messages":[],"stop":["a","b"],"tool_choice":"auto"}', ChatRequest)
    assert listed.stop_sequences == ("a", "b")
    assert listed.tool_choice == "auto"


def test_tool_parameters_is_an_alias_of_arguments() -> None:
    body = (
        b'{"messages":[],"tools":[{"type":"function","function":{"name":"f",'
        b'"parameters":{"type":"object"}}}]}'
    )
    request = decode_body(body, ChatRequest)
    assert request.tools is not None
    assert request.tools[0].function.schema == {"type": "object"}


def test_completion_prompt_string_or_list() -> None:
    assert decode_body(b'{"prompt":"a"}', CompletionRequest).prompts == ("a",)
    assert decode_body(b'{"prompt":["a","b"]}', CompletionRequest).prompts == ("a", "b")
    error = body_error(b'{"prompt":[]}', CompletionRequest)
    assert error.status == 422
    assert error.message == (
        DATA + "Empty array detected. Do not use an empty array for the prompt."
    )


def test_invocations_try_generate_then_chat_then_completion() -> None:
    generate = decode_invocations(b'{"inputs":"x","messages":[],"stream":true}')
    assert isinstance(generate, CompatGenerateRequest)
    assert generate.stream
    chat = decode_invocations(b'{"messages":[{"role":"user","content":"x"}]}')
    assert isinstance(chat, ChatRequest)
    completion = decode_invocations(b'{"prompt":"x","inputs":5}')
    assert isinstance(completion, CompletionRequest)
    with pytest.raises(BodyError) as info:
        decode_invocations(b'{"foo":1}')
    assert (info.value.status, info.value.message) == (
        422,
        DATA + "data did not match any variant of untagged enum SagemakerRequest",
    )
    with pytest.raises(BodyError) as info:
        decode_invocations(b'{"inputs":')
    assert info.value.status == 400


def test_vertex_instances_are_generate_or_chat() -> None:
    request = decode_vertex(
        b'{"instances":[{"inputs":"a"},{"messages":[{"role":"user","content":"b"}]}]}'
    )
    assert isinstance(request.instances[0], VertexInstance)
    assert isinstance(request.instances[1], ChatRequest)
    for data, message in (
        (b'{"instances":[{"x":1}]}', "instances[0]: data did not match any variant"),
        (b"{}", "missing field `instances`"),
        (b'{"instances":{}}', "instances: invalid type: map, expected array"),
        (b"[]", "invalid type: sequence, expected object"),
    ):
        with pytest.raises(BodyError) as info:
            decode_vertex(data)
        assert info.value.status == 422
        assert info.value.message.startswith(DATA + message)


# --- rejections ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"", "EOF while parsing a value at line 1 column 0"),
        (b'{"inputs":"x"', "EOF while parsing an object at line 1 column 13"),
        (b'{"inputs":"x",}', "trailing comma at line 1 column 15"),
        (b'{"inputs":"x"} x', "trailing characters at line 1 column 16"),
        (b'{"inputs":"\xff"}', "invalid unicode code point at line 1 column 13"),
        (b'{"inputs":"x",\n "parameters":{"seed":01}}', "invalid number at line 2 column 24"),
        (b"[" * 129 + b"]" * 129, "recursion limit exceeded at line 1 column 129"),
        (b'{"inputs":' + b"[" * 100_000, "recursion limit exceeded at line 1 column 138"),
    ],
)
def test_syntax_errors_are_400(data: bytes, detail: str) -> None:
    error = body_error(data, GenerateRequest)
    assert (error.status, error.message) == (400, SYNTAX + detail)
    # the untyped decoders (/invocations, /vertex) answer the same
    for decode in (decode_invocations, decode_vertex):
        with pytest.raises(BodyError) as info:
            decode(data)
        assert (info.value.status, info.value.message) == (400, SYNTAX + detail)


def test_nesting_up_to_serdes_limit_is_accepted() -> None:
    value = b"[" * 127 + b"]" * 127  # 128 levels with the grammar object around it
    body = b'{"inputs":"x","parameters":{"grammar":{"type":"json","value":' + value + b"}}}"
    with pytest.raises(BodyError) as info:  # 129 levels in all
        decode_body(body, GenerateRequest)
    assert info.value.message.startswith(SYNTAX + "recursion limit exceeded")
    shallower = body.replace(b"[]", b"1", 1).replace(b"[1]", b"1", 1)
    assert decode_body(shallower, GenerateRequest).parameters.grammar is not None


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"{}", "missing field `inputs`"),
        (b"[]", "invalid type: array, expected object"),
        (b'{"inputs":5}', "inputs: invalid type: int, expected str"),
        (b'{"inputs":"x","parameters":null}', "parameters: invalid type: null, expected object"),
        (
            b'{"inputs":"x","parameters":{"max_new_tokens":-1}}',
            "parameters.max_new_tokens: Expected `int` >= 0",
        ),
        (
            b'{"inputs":"x","parameters":{"top_k":2147483648}}',
            "parameters.top_k: Expected `int` <= 2147483647",
        ),
        (
            b'{"inputs":"x","parameters":{"seed":18446744073709551616}}',
            "parameters: invalid value: integer `18446744073709551616`, expected u64"
            " (field `seed`)",
        ),
        (
            b'{"inputs":"x","parameters":{"stop":"a"}}',
            "parameters.stop: invalid type: str, expected array",
        ),
        (
            b'{"inputs":"x","parameters":{"do_sample":1}}',
            "parameters.do_sample: invalid type: int, expected bool",
        ),
        (
            b'{"inputs":"x","parameters":{"grammar":{"type":"xml","value":1}}}',
            "parameters.grammar.type: Invalid enum value 'xml'",
        ),
        (
            b'{"inputs":"x","parameters":{"grammar":{"type":"regex"}}}',
            "parameters.grammar: missing field `value`",
        ),
    ],
)
def test_schema_errors_are_422(data: bytes, detail: str) -> None:
    error = body_error(data, GenerateRequest)
    assert (error.status, error.message) == (422, DATA + detail)


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b'{"messages":[{"role":"user"}]}', "messages[0]: data did not match any variant"),
        (b'{"messages":[{"content":"x"}]}', "messages[0]: missing field `role`"),
        (
            b'{"messages":[],"max_tokens":1,"max_completion_tokens":2}',
            "duplicate field `max_tokens` (alias `max_completion_tokens`)",
        ),
        (
            b'{"messages":[{"role":"u","content":[{"type":"audio"}]}]}',
            "messages[0].content[0].type: Invalid value 'audio'",
        ),
        (
            b'{"messages":[],"response_format":{"type":"json_schema","value":{}}}',
            "response_format: missing field `schema`",
        ),
    ],
)
def test_chat_schema_errors_are_422(data: bytes, detail: str) -> None:
    error = body_error(data, ChatRequest)
    assert error.status == 422
    assert error.message.startswith(DATA + detail)


def test_unsupported_media_type_text() -> None:
    assert (
        UNSUPPORTED_MEDIA_TYPE_MESSAGE == "Expected request with `Content-Type: application/json`"
    )
