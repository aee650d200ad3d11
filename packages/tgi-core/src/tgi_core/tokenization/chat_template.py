"""Chat templates: render a conversation into a prompt the way transformers and TGI do.

The environment is transformers' (jinja2 ``ImmutableSandboxedEnvironment`` with
``trim_blocks``/``lstrip_blocks``, ``loopcontrols``, a ``tojson`` that keeps non-ASCII and takes
``indent``, ``raise_exception``, ``strftime_now``, a sandboxed ``dict`` and ``namespace``). The
request-level behaviour is TGI's: list contents are flattened to text (images become
``![](url)``), ``{% generation %}`` blocks render their body, and a conversation that ends with
an assistant message is cut right after that message's content (continue-final-message).

Where templates come from (files, GGUF metadata) is the loader's business, not this module's.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["TEMPLATE_NOT_FOUND", "ChatTemplate", "ChatTemplateError", "flatten_content"]

# TGI's message for a model that has no chat template (minijinja's TemplateNotFound).
TEMPLATE_NOT_FOUND = "template not found"


class ChatTemplateError(Exception):
    """A chat template is missing or failed to render (TGI's 422 ``template_error``).

    ``message`` is the detail TGI shows after ``Template error: ``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` renders its body (training-only markers)."""

    tags = {"generation"}  # noqa: RUF012 (jinja2's Extension API is a class attribute)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


class _TemplateDict:
    """``dict(...)`` for templates, without the attribute surface of the real type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja2's ``namespace`` refusing underscore names (no way into CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot set underscore attributes on a namespace: {name!r}"
            )


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja2's own tojson escapes HTML characters; templates expect plain json.dumps.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def flatten_content(content: object) -> object:
    """TGI's text form of a message content: chunk lists become one string.

    ``{"type": "text", "text": t}`` contributes ``t``; ``{"type": "image_url",
    "image_url": {"url": u}}`` contributes ``![](u)``. Anything else is returned unchanged.
    """
    if not isinstance(content, list):
        return content
    pieces: list[str] = []
    for chunk in content:
        if not isinstance(chunk, Mapping):
            return content
        if chunk.get("type") == "image_url":
            image_url = chunk.get("image_url")
            url = image_url.get("url", "") if isinstance(image_url, Mapping) else ""
            pieces.append(f"![]({url})")
        elif isinstance(chunk.get("text"), str):
            pieces.append(chunk["text"])
        else:
            return content
    return "".join(pieces)


def _prepare_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    prepared = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"chat messages must be objects, got {message!r}")
        # Keys set to None render as "None" or break templates that test `is defined`.
        prepared.append(
            {
                key: flatten_content(value) if key == "content" else value
                for key, value in message.items()
                if value is not None
            }
        )
    return prepared


def _continue_final_message(rendered: str, messages: Sequence[Mapping[str, Any]]) -> str:
    """Cut the prompt right after the final assistant message, as TGI does."""
    if not messages or messages[-1].get("role") != "assistant":
        return rendered
    content = messages[-1].get("content")
    if not isinstance(content, str):
        return rendered
    index = rendered.rfind(content)
    if index < 0:
        return rendered
    return rendered[: index + len(content)].rstrip()


class ChatTemplate:
    """A compiled chat template plus the special tokens it is rendered with.

    The template compiles on first use and is cached per source; a syntax error surfaces as
    ``ChatTemplateError`` from ``render`` (the server answers 422), not at load time.
    """

    def __init__(
        self, source: str, *, bos_token: str | None = None, eos_token: str | None = None
    ) -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def __repr__(self) -> str:
        return f"ChatTemplate(source={self.source[:40]!r}..., bos_token={self.bos_token!r})"

    @functools.cached_property
    def variables(self) -> frozenset[str]:
        """Names the template reads from its context (empty if it does not parse)."""
        try:
            parsed = _environment().parse(self.source)
        except jinja2.TemplateError:
            return frozenset()
        return frozenset(jinja2.meta.find_undeclared_variables(parsed))

    @property
    def uses_tools(self) -> bool:
        """Whether the template renders ``tools`` itself (else TGI appends them to the prompt)."""
        return "tools" in self.variables

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render ``messages`` (and ``tools``) into the prompt text.

        ``extra`` adds template variables (e.g. ``guideline``). When the last message is the
        assistant's, the prompt stops right after its content so the model continues it.

        Raises:
            ChatTemplateError: the template does not parse, calls ``raise_exception``, or fails.
        """
        prepared = _prepare_messages(messages)
        context: dict[str, Any] = {
            **extra,
            "messages": prepared,
            "tools": list(tools) if tools is not None else None,
            "add_generation_prompt": add_generation_prompt,
        }
        # A missing special token stays undefined (renders as ""), as in transformers.
        if self.bos_token is not None:
            context["bos_token"] = self.bos_token
        if self.eos_token is not None:
            context["eos_token"] = self.eos_token
        try:
            rendered = _compile(self.source).render(context)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(exc.message or type(exc).__name__) from exc
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise ChatTemplateError(f"{type(exc).__name__}: {exc}") from exc
        return _continue_final_message(rendered, prepared)
