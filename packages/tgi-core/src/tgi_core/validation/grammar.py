"""Validation of a request's ``grammar`` and its compilation to the regex the runner follows.

``compile_grammar`` is TGI router's grammar step (``validation.rs``), in its order and with
its messages (each prefixed "Input validation error: " in answers):

1. ``--disable-grammar-support`` -> "grammar is not supported";
2. ``json`` / ``json_object`` / ``json_schema`` (its ``schema``): a string value is parsed as
   JSON again ("grammar is not valid: <why>"); a value that is neither a string nor an
   object is "grammar is not supported", as in TGI;
3. the schema must be a valid draft 2020-12 JSON Schema ("grammar is not valid: <why>") and
   have a top-level ``properties`` ("grammar is not valid: Grammar must have a 'properties'
   field");
4. it is compiled to a regex by ``outlines_core`` (the library TGI's router uses, same
   default whitespace rule): "cannot compile regex from schema: <why>";
5. ``regex``: passed on as is.

Then, beyond TGI (whose shards fail the whole batch on a regex they cannot compile), every
regex must build an automaton in ``outlines_core`` (the runner's compiler), checked over a
vocabulary of the 256 single bytes: "grammar is not valid: <why>", and that automaton must
be small enough for the runner to compile over the model's vocabulary in bounded time and
memory: "grammar is too complex: <why>" (``grammar_bounds``). JSON nested deeper than
Python's recursion allows is "grammar is not valid: schema nested too deeply".

The reasons after the colons are those of Python's ``json``, ``jsonschema`` and
``outlines_core``, not serde's and jsonschema-rs's words. Compiled schemas are cached
(chat tools send the same schema again and again). Nothing here masks tokens: the runner
does, from ``SamplingParams.grammar``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from outlines_core import Index, Vocabulary
from outlines_core.json_schema import build_regex_from_schema

from tgi_core.api.generate import GrammarType
from tgi_core.errors import ValidationError
from tgi_core.validation.grammar_bounds import check_estimate, check_transitions

__all__ = ["compile_grammar", "regex_from_schema"]

_NOT_SUPPORTED = "grammar is not supported"
_TOO_DEEP = "grammar is not valid: schema nested too deeply"
_CACHE_SIZE = 256


def compile_grammar(grammar: GrammarType, *, disable_grammar_support: bool) -> str:
    """The regex ``grammar`` constrains the generated text to.

    Raises:
        ValidationError: grammar support disabled, an invalid schema, or one that cannot be
            compiled; TGI's messages (see the module docstring).
    """
    if disable_grammar_support:
        raise ValidationError(_NOT_SUPPORTED)
    if grammar.type == "regex":
        return _checked_regex(str(grammar.value))
    value = grammar.value["schema"] if grammar.type == "json_schema" else grammar.value
    return _checked_regex(regex_from_schema(_schema(value)))


def regex_from_schema(schema: Any) -> str:
    """The regex of a decoded JSON Schema, checked as TGI checks it (rules 3-4).

    Raises:
        ValidationError: not a draft 2020-12 schema, no top-level ``properties``, or a
            schema ``outlines_core`` cannot compile.
    """
    try:
        text = json.dumps(schema, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:  # NaN or infinity (msgspec decodes 1e400 as inf)
        raise ValidationError(f"grammar is not valid: {exc}") from exc
    except RecursionError as exc:
        raise ValidationError(_TOO_DEEP) from exc
    return _compiled(text)


def _schema(value: Any) -> Any:
    """Rule 2: the schema object (a string is JSON to parse again)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValidationError(f"grammar is not valid: {exc}") from exc
        except RecursionError as exc:
            raise ValidationError(_TOO_DEEP) from exc
    if isinstance(value, dict):
        return value
    raise ValidationError(_NOT_SUPPORTED)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compiled(text: str) -> str:
    # Keyed by the schema's JSON text: key order matters (it is the order of the output).
    try:
        schema = json.loads(text)
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValidationError(f"grammar is not valid: {exc.message}") from exc
    except RecursionError as exc:
        raise ValidationError(_TOO_DEEP) from exc
    if not isinstance(schema, dict) or "properties" not in schema:
        raise ValidationError("grammar is not valid: Grammar must have a 'properties' field")
    try:
        return str(build_regex_from_schema(text))
    except Exception as exc:  # outlines_core raises ValueError and TypeError
        raise ValidationError(f"cannot compile regex from schema: {exc}") from exc


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _checked_regex(regex: str) -> str:
    """``regex``, once ``outlines_core`` built an automaton from it (the runner will too),
    small enough for the runner (``grammar_bounds``)."""
    check_estimate(regex)
    try:
        index = Index(regex, _byte_vocabulary())
    except ValueError as exc:
        raise ValidationError(f"grammar is not valid: {exc}") from exc
    check_transitions(index.get_transitions())
    return regex


@functools.cache
def _byte_vocabulary() -> Vocabulary:
    # Every single byte is a token (ids 1..256, EOS 0): any valid regex compiles over it.
    return Vocabulary(0, {bytes([byte]): [byte + 1] for byte in range(256)})
