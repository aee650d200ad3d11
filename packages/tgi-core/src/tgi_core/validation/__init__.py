"""Request validation and the mapping of every route's request to a generate request.

- ``generate``: ``validate_generate`` (TGI's rules, order and messages) -> ``ValidRequest``
- ``chat``: tools, template messages and ``chat_to_generate`` for ``/v1/chat/completions``
- ``completions``: ``completion_to_generate`` (``/v1/completions``), ``vertex_to_generate``
- ``grammar``: ``compile_grammar`` (TGI's grammar checks) -> the regex the runner follows

Tokenization is injected (``TextEncoder``); templates are rendered elsewhere.
"""

from __future__ import annotations

# ruff: noqa: E402  (the extra is checked before the imports that need it)
from tgi_core._extras import require_frontend

require_frontend(__name__)

from tgi_core.validation.chat import (
    DEFAULT_TOOL_PROMPT,
    NO_TOOL,
    adapter_id_for,
    chat_to_generate,
    messages_for_template,
    select_tools,
    tool_grammar,
    tool_prompt,
)
from tgi_core.validation.completions import completion_to_generate, vertex_to_generate
from tgi_core.validation.generate import (
    GenerateInput,
    GenerateLike,
    ImagePromptEncoder,
    TextEncoder,
    ValidRequest,
    random_seed,
    validate_generate,
)
from tgi_core.validation.grammar import compile_grammar, regex_from_schema

__all__ = [
    "DEFAULT_TOOL_PROMPT",
    "NO_TOOL",
    "GenerateInput",
    "GenerateLike",
    "ImagePromptEncoder",
    "TextEncoder",
    "ValidRequest",
    "adapter_id_for",
    "chat_to_generate",
    "compile_grammar",
    "completion_to_generate",
    "messages_for_template",
    "random_seed",
    "regex_from_schema",
    "select_tools",
    "tool_grammar",
    "tool_prompt",
    "validate_generate",
    "vertex_to_generate",
]
