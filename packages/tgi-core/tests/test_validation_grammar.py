"""Grammar validation and compilation: TGI's order and messages, and the regex produced."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tgi_core.api import GenerateRequest, decode_body
from tgi_core.api.generate import GrammarType
from tgi_core.errors import ValidationError
from tgi_core.settings.slices import ValidationLimits
from tgi_core.testing import ByteEncoder
from tgi_core.validation import validate_generate
from tgi_core.validation.grammar import compile_grammar, regex_from_schema

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer"},
    },
    "required": ["name", "age"],
}


def grammar_of(body: dict[str, Any]) -> Any:
    """The ``GrammarType`` of a request whose ``parameters.grammar`` is ``body``."""
    raw = json.dumps({"inputs": "x", "parameters": {"grammar": body}}).encode()
    return decode_body(raw, GenerateRequest).parameters.grammar


def compiled(body: dict[str, Any], *, disabled: bool = False) -> str:
    return compile_grammar(grammar_of(body), disable_grammar_support=disabled)


def error_of(body: dict[str, Any], *, disabled: bool = False) -> str:
    with pytest.raises(ValidationError) as info:
        compiled(body, disabled=disabled)
    return info.value.message.removeprefix("Input validation error: ")


def test_json_schema_becomes_a_regex_of_its_objects() -> None:
    regex = compiled({"type": "json", "value": PERSON})
    assert re.fullmatch(regex, '{"name": "Ann", "age": 31}')
    assert re.fullmatch(regex, '{"name":"Ann","age":-4}')
    assert not re.fullmatch(regex, '{"age": 31, "name": "Ann"}')  # the schema's order
    assert not re.fullmatch(regex, '{"name": "Ann"}')  # age is required
    assert not re.fullmatch(regex, '{"name": "Annabellee", "age": 1}')  # maxLength
    assert not re.fullmatch(regex, '{"name": "Ann", "age": 3.5}')


def test_every_json_type_spelling_gives_the_same_regex() -> None:
    expected = compiled({"type": "json", "value": PERSON})
    assert compiled({"type": "json_object", "value": PERSON}) == expected
    assert compiled({"type": "json", "value": json.dumps(PERSON)}) == expected
    assert compiled({"type": "json_schema", "value": {"name": "person", "schema": PERSON}}) == (
        expected
    )
    assert compiled({"type": "json_schema", "value": {"schema": json.dumps(PERSON)}}) == expected


def test_regex_is_passed_as_is() -> None:
    assert compiled({"type": "regex", "value": "(yes|no)[.!]"}) == "(yes|no)[.!]"


def test_disabled_support_is_refused_first() -> None:
    for body in (
        {"type": "regex", "value": "a"},
        {"type": "json", "value": "not json"},
        {"type": "json", "value": PERSON},
    ):
        assert error_of(body, disabled=True) == "grammar is not supported"


def test_a_string_value_must_be_json() -> None:
    message = error_of({"type": "json", "value": "{not json"})
    assert message.startswith("grammar is not valid: Expecting property name")


def test_a_value_neither_string_nor_object_is_not_supported() -> None:
    # TGI: ``_ => Err(ValidationError::Grammar)``
    assert error_of({"type": "json", "value": [1, 2]}) == "grammar is not supported"
    assert error_of({"type": "json", "value": 3}) == "grammar is not supported"


def test_the_schema_must_be_a_draft_2020_12_schema() -> None:
    assert error_of({"type": "json", "value": {"type": "foo", "properties": {}}}) == (
        "grammar is not valid: 'foo' is not valid under any of the given schemas"
    )
    assert error_of({"type": "json", "value": {"properties": 5}}) == (
        "grammar is not valid: 5 is not of type 'object'"
    )
    assert error_of({"type": "json", "value": "[1]"}) == (
        "grammar is not valid: [1] is not of type 'object', 'boolean'"
    )


def test_the_schema_must_have_properties() -> None:
    expected = "grammar is not valid: Grammar must have a 'properties' field"
    assert error_of({"type": "json", "value": {"type": "object"}}) == expected
    assert error_of({"type": "json", "value": "true"}) == expected  # a valid schema
    assert error_of({"type": "json_schema", "value": {"schema": {"type": "string"}}}) == expected


def test_a_schema_outlines_cannot_compile() -> None:
    body = {"type": "json", "value": {"properties": {"when": {"type": "string", "format": "x"}}}}
    assert error_of(body) == (
        "cannot compile regex from schema: Format x is not supported by Outlines"
    )
    ref = {"type": "json", "value": {"properties": {"a": {"$ref": "#/$defs/missing"}}}}
    assert error_of(ref).startswith("cannot compile regex from schema: Invalid reference path")


def test_infinite_numbers_are_not_json() -> None:
    with pytest.raises(ValidationError, match="grammar is not valid: Out of range float"):
        regex_from_schema({"properties": {"a": {"type": "number", "maximum": float("inf")}}})


def test_refs_to_named_definitions_compile() -> None:
    schema = {
        "$defs": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "properties": {"city": {"$ref": "#/$defs/city"}},
        "required": ["city"],
    }
    regex = regex_from_schema(schema)
    assert re.fullmatch(regex, '{"city": "Rome"}')
    assert not re.fullmatch(regex, '{"city": "Oslo"}')


def test_validation_carries_the_regex_and_checks_grammar_after_lengths() -> None:
    limits = ValidationLimits(max_input_tokens=8, max_total_tokens=16)
    parameters = {"max_new_tokens": 4, "grammar": {"type": "json", "value": PERSON}}
    body = json.dumps({"inputs": "hello", "parameters": parameters}).encode()
    request = decode_body(body, GenerateRequest)
    valid = validate_generate(request, limits, ByteEncoder(), stream=False)
    assert valid.sampling.grammar == regex_from_schema(PERSON)
    too_long = GenerateRequest(inputs="x" * 20, parameters=request.parameters)
    with pytest.raises(ValidationError, match="`inputs` tokens \\+ `max_new_tokens`"):
        validate_generate(too_long, limits, ByteEncoder(), stream=False)


@pytest.mark.parametrize("regex", ["[a-z", "a{2,1}", "(?<=a)b"])
def test_a_regex_the_runner_cannot_compile_is_refused_at_validation(regex: str) -> None:
    with pytest.raises(ValidationError) as info:
        compile_grammar(GrammarType(type="regex", value=regex), disable_grammar_support=False)
    assert str(info.value).startswith("Input validation error: grammar is not valid: ")


@pytest.mark.parametrize(
    "body",
    [
        {"type": "regex", "value": r"[\s\S]{0,20000}"},
        {"type": "regex", "value": "(a{1000}){1000}"},
        {"type": "regex", "value": r"\p{L}{5000}"},  # Rust syntax: estimated from its text
        {"type": "regex", "value": r"[\s\S]{0,1000}"},  # small estimate, big automaton
        {"type": "json", "value": {"properties": {"s": {"type": "string", "maxLength": 20000}}}},
        {"type": "json", "value": {"properties": {"a": {"type": "array", "maxItems": 1000}}}},
    ],
)
def test_grammars_too_big_for_the_runner_are_refused(body: dict[str, Any]) -> None:
    assert error_of(body).startswith("grammar is too complex: ")


def test_grammars_within_the_bounds_compile() -> None:
    assert compiled({"type": "regex", "value": r"[\s\S]{0,100}"}) == r"[\s\S]{0,100}"
    schema = {"properties": {"s": {"type": "string", "maxLength": 100}}}
    assert re.fullmatch(compiled({"type": "json", "value": schema}), '{"s": "hello"}')


def test_deeply_nested_json_is_a_validation_error() -> None:
    nested = "[" * 100_000 + "]" * 100_000
    assert error_of({"type": "json", "value": nested}) == (
        "grammar is not valid: schema nested too deeply"
    )
    deep: dict[str, Any] = {}
    for _ in range(5000):
        deep = {"properties": deep}
    grammar = GrammarType(type="json", value=deep)
    with pytest.raises(ValidationError) as info:
        compile_grammar(grammar, disable_grammar_support=False)
    assert info.value.detail == "grammar is not valid: schema nested too deeply"
