"""Decoding of request bodies, with axum's plain-text rejections.

TGI's JSON extractor (axum 0.7) rejects a body before any TGI code runs, with a plain-text
answer, not the ``{"error", "error_type"}`` JSON: a syntax error is a 400 "Failed to parse
the request body as JSON: ...", a body of the wrong shape is a 422 "Failed to deserialize
the JSON body into the target type: ...". ``decode_body`` reproduces both as ``BodyError``.
A syntax error's text is serde_json's own, found by ``json_syntax.diagnose`` (never msgspec's
wording, which changes between its releases), nesting deeper than serde's 128 levels
included. A shape error's text is msgspec's description reworded in serde's style
(``missing field `inputs```, ``parameters.top_k: invalid type: str, expected int``);
serde's ``at line L column C`` suffix is not reproduced there.

The content-type (415) and size (413) checks belong to the HTTP server; the 415 text is
here so that both sides agree on it.

TGI's untagged unions (``/invocations``: generate, then chat, then completion;
``/vertex`` instances: generate, then chat) are decoded by ``decode_invocations`` and
``decode_vertex``: JSON is parsed once, then each variant is tried in TGI's order.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Hashable
from typing import Any, TypeAlias, TypeVar, cast

import msgspec

from tgi_core.api.chat import ChatRequest
from tgi_core.api.completions import CompletionRequest
from tgi_core.api.generate import CompatGenerateRequest
from tgi_core.api.info import VertexInstance, VertexRequest
from tgi_core.api.json_syntax import diagnose, too_deep

__all__ = [
    "UNSUPPORTED_MEDIA_TYPE_MESSAGE",
    "BodyError",
    "SagemakerRequest",
    "decode_body",
    "decode_invocations",
    "decode_vertex",
]

T = TypeVar("T")

UNSUPPORTED_MEDIA_TYPE_MESSAGE = "Expected request with `Content-Type: application/json`"
SYNTAX_PREFIX = "Failed to parse the request body as JSON: "
DATA_PREFIX = "Failed to deserialize the JSON body into the target type: "

SagemakerRequest: TypeAlias = CompatGenerateRequest | ChatRequest | CompletionRequest
"""What ``/invocations`` accepts, in the order TGI tries the variants."""

_SAGEMAKER_VARIANTS: tuple[type[SagemakerRequest], ...] = (
    CompatGenerateRequest,
    ChatRequest,
    CompletionRequest,
)

_PATH_SUFFIX = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")
_WRONG_TYPE = re.compile(r"^Expected `(?P<expected>.+)`, got `(?P<got>[^`]+)`$")


class BodyError(Exception):
    """A request body the JSON extractor rejects: ``status`` 400 or 422, plain-text ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@functools.lru_cache(maxsize=64)
def _decoder(type_: Hashable) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


def decode_body(data: bytes, type_: type[T]) -> T:
    """Decode a JSON request body into ``type_`` (a msgspec Struct or any msgspec type).

    Raises:
        BodyError: 400 for malformed JSON (invalid UTF-8 and nesting deeper than 128
            included), 422 for JSON of the wrong shape (missing or mistyped fields,
            out-of-range integers, an empty ``prompt`` list, ...).
    """
    _check_depth(data)
    try:
        return cast("T", _decoder(cast("Hashable", type_)).decode(data))
    except msgspec.ValidationError as exc:
        raise BodyError(422, DATA_PREFIX + _serde_detail(str(exc))) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise _syntax_error(data) from None


def decode_invocations(data: bytes) -> SagemakerRequest:
    """Decode a ``/invocations`` body: a generate request if it has ``inputs``, else a chat
    request if it has ``messages``, else a completion request (TGI's untagged order).

    Raises:
        BodyError: as ``decode_body``; a body matching no variant is a 422.
    """
    value = _parse(data)
    return _first_variant(value, _SAGEMAKER_VARIANTS, "SagemakerRequest", "")


def decode_vertex(data: bytes) -> VertexRequest:
    """Decode a ``/vertex`` body; each instance is a generate instance, else a chat request.

    Raises:
        BodyError: as ``decode_body``; an instance matching no variant is a 422.
    """
    value = _parse(data)
    if not isinstance(value, dict):
        raise BodyError(422, f"{DATA_PREFIX}invalid type: {_json_kind(value)}, expected object")
    if "instances" not in value:
        raise BodyError(422, f"{DATA_PREFIX}missing field `instances`")
    raw_instances = value["instances"]
    if not isinstance(raw_instances, list):
        kind = _json_kind(raw_instances)
        raise BodyError(422, f"{DATA_PREFIX}instances: invalid type: {kind}, expected array")
    variants: tuple[type[VertexInstance | ChatRequest], ...] = (VertexInstance, ChatRequest)
    instances = tuple(
        _first_variant(item, variants, "VertexInstance", f"instances[{i}]: ")
        for i, item in enumerate(raw_instances)
    )
    return VertexRequest(instances=instances)


def _parse(data: bytes) -> Any:
    _check_depth(data)
    try:
        return msgspec.json.decode(data)
    except msgspec.ValidationError as exc:  # e.g. a number beyond the float range
        raise BodyError(422, DATA_PREFIX + _serde_detail(str(exc))) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise _syntax_error(data) from None


def _check_depth(data: bytes) -> None:
    """serde_json's recursion limit, checked before decoding (msgspec allows ~1000 levels
    and then raises RecursionError)."""
    if too_deep(data):
        raise _syntax_error(data)


def _first_variant(value: Any, variants: tuple[type[T], ...], enum_name: str, where: str) -> T:
    for variant in variants:
        try:
            return msgspec.convert(value, variant)
        except msgspec.ValidationError:
            continue
    msg = f"{DATA_PREFIX}{where}data did not match any variant of untagged enum {enum_name}"
    raise BodyError(422, msg)


def _syntax_error(data: bytes) -> BodyError:
    """serde_json's 400 for ``data``, which the decoder refused as malformed."""
    detail = diagnose(data)
    if detail is None:  # the decoder is stricter than serde somewhere: say where it balked
        detail = "expected value at line 1 column 1"
    return BodyError(400, SYNTAX_PREFIX + detail)


def _serde_detail(text: str) -> str:
    """Reword a msgspec validation message the way serde_path_to_error prints it."""
    path = ""
    match = _PATH_SUFFIX.search(text)
    if match:
        path = match["path"].removeprefix(".")
        text = text[: match.start()]
    if missing := _MISSING_FIELD.match(text):
        text = f"missing field `{missing['field']}`"
    elif wrong := _WRONG_TYPE.match(text):
        text = f"invalid type: {wrong['got']}, expected {wrong['expected']}"
    return f"{path}: {text}" if path else text


def _json_kind(value: Any) -> str:
    kinds = {dict: "map", list: "sequence", str: "string", bool: "boolean", float: "float"}
    if value is None:
        return "null"
    return kinds.get(type(value), "integer")
