"""The chat route's mapping: a ChatRequest to template messages, tools and a generate request.

The server's order, TGI's: ``select_tools`` (tool errors) -> render the chat template over
``messages_for_template`` (another module renders) -> ``chat_to_generate`` ->
``validate_generate``. Templates are not rendered here; this module only prepares their
inputs and maps the sampling fields.

With tools in use, the generate request carries TGI's tool grammar (a JSON schema that
``tgi_core.validation.grammar`` compiles to a regex): the model must answer
``{"function": {"_name": <tool>, <arguments>}}``. ``tool_choice: "none"`` (or no tool left
to choose) does not use tools. Reading the answer back (tool calls, ``no_tool``) is the
server's job.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from tgi_core.api.chat import (
    ChatRequest,
    FunctionDefinition,
    Message,
    TextChunk,
    Tool,
    ToolChoiceFunction,
)
from tgi_core.api.common import encode_json
from tgi_core.api.generate import GenerateParameters, GrammarType
from tgi_core.errors import ToolError
from tgi_core.validation.generate import GenerateInput

__all__ = [
    "DEFAULT_TOOL_PROMPT",
    "NO_TOOL",
    "adapter_id_for",
    "chat_to_generate",
    "messages_for_template",
    "select_tools",
    "tool_grammar",
    "tool_prompt",
]

DEFAULT_TOOL_PROMPT = (
    "\nGiven the functions available, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt. Respond in the format {name: "
    "function name, parameters: dictionary of argument name and its value}.Do not use "
    "variables.\n"
)
"""Appended after the tools when the request gives no (or an empty) ``tool_prompt``."""

NO_TOOL = Tool(
    type="function",
    function=FunctionDefinition(
        name="no_tool",
        description="Open ended response with no specific tool selected",
        arguments={"type": "object"},
    ),
)
"""The synthetic tool offered with ``tool_choice`` auto: choosing it means "answer in text"
(the server then runs the request again without tools). It has no arguments, as in TGI 3."""


def select_tools(request: ChatRequest) -> tuple[Tool, ...] | None:
    """The tools the model is offered, or None when the request does not use tools.

    ``tool_choice`` null/``"auto"``: every tool plus ``NO_TOOL``; ``"required"``: every
    tool (none given: no tools); ``"none"``: no tools; another string or ``{"type":
    "function", ...}``: that tool of the client's.

    Raises:
        ToolError: ``tools`` together with ``response_format``, or a ``tool_choice`` that
            names no tool.
    """
    if request.response_format is not None and request.tools is not None:
        raise ToolError("Grammar and tools are mutually exclusive")
    if request.tools is None:
        return None
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceFunction):
        choice = choice.function.name
    if choice == "none":
        return None
    if choice == "required":
        return request.tools or None
    if choice is None or choice == "auto":
        return (*request.tools, NO_TOOL)
    for tool in request.tools:  # the client's tools only: "no_tool" is not one of them
        if tool.function.name == choice:
            return (tool,)
    raise ToolError(f"Tool with name {choice} not found")


def tool_prompt(request: ChatRequest) -> str:
    """The instruction placed after the tools (the request's, unless empty, else the default)."""
    return request.tool_prompt or DEFAULT_TOOL_PROMPT


def tool_grammar(tools: tuple[Tool, ...]) -> dict[str, Any]:
    """The JSON-schema grammar that makes the model answer with one of ``tools``.

    TGI's ``ToolGrammar::apply``: each function becomes an object schema with its
    description, a constant ``_name`` (first, required) then its own properties and
    required names, and ``additionalProperties`` false (true only for the string
    ``"true"``, as TGI reads it); the root's ``function`` picks one through ``$ref``s.
    Unlike TGI, the root also requires ``function``: without it the compiled regex lets
    the model answer ``{}``, which is no call at all.
    """
    functions: dict[str, Any] = {}
    for tool in tools:
        function = tool.function
        arguments = function.schema if isinstance(function.schema, dict) else {}
        properties: dict[str, Any] = {"_name": {"type": "string", "const": function.name}}
        required: list[Any] = ["_name"]
        if isinstance(arguments.get("properties"), dict):
            properties.update(arguments["properties"])
        if isinstance(arguments.get("required"), list):
            required.extend(arguments["required"])
        schema: dict[str, Any] = {"description": function.description or ""}
        if isinstance(function.schema, dict):
            schema["additionalProperties"] = arguments.get("additionalProperties") == "true"
        functions[function.name] = {**schema, "properties": properties, "required": required}
    refs = [{"$ref": f"#/$functions/{tool.function.name}"} for tool in tools]
    return {
        "$functions": functions,
        "properties": {"function": {"anyOf": refs}},
        "required": ["function"],
    }


def messages_for_template(request: ChatRequest) -> list[dict[str, str]]:
    """The conversation as the chat template receives it: ``{"role", "content"}`` dicts.

    Content chunks are joined into one text (an image becomes ``![](url)``); an assistant
    message carrying ``tool_calls`` gets their JSON as its content. ``tool_call_id`` is
    kept when present.
    """
    messages = []
    for message in request.messages:
        item = {"role": message.role, "content": _flat_content(message)}
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        messages.append(item)
    return messages


def chat_to_generate(
    request: ChatRequest, prompt: str, adapter_ids: Collection[str] = ()
) -> GenerateInput:
    """The generate request TGI builds from a chat request and its templated ``prompt``.

    Temperature exactly 0 is greedy, anything else (absent included) samples;
    ``presence_penalty`` p becomes ``repetition_penalty`` p + 2.0; ``top_logprobs`` is
    ``top_n_tokens``; a ``model`` among ``adapter_ids`` is the ``adapter_id``. ``details`` is
    on, ``decoder_input_details`` and ``add_special_tokens`` off (the template already
    placed the special tokens).

    Raises:
        ToolError: see ``select_tools``.
    """
    tools = select_tools(request)
    grammar = request.response_format
    if tools is not None:
        grammar = GrammarType(type="json", value=tool_grammar(tools))
    greedy = request.temperature == 0.0
    presence_penalty = request.presence_penalty
    parameters = GenerateParameters(
        temperature=None if greedy else request.temperature,
        repetition_penalty=None if presence_penalty is None else presence_penalty + 2.0,
        frequency_penalty=request.frequency_penalty,
        top_p=request.top_p,
        do_sample=not greedy,
        max_new_tokens=request.max_new_tokens,
        stop=request.stop_sequences,
        details=True,
        decoder_input_details=False,
        seed=request.seed,
        top_n_tokens=request.top_logprobs,
        grammar=grammar,
        adapter_id=adapter_id_for(request.model, adapter_ids),
    )
    return GenerateInput(inputs=prompt, parameters=parameters, add_special_tokens=False)


def adapter_id_for(model: str | None, adapter_ids: Collection[str]) -> str | None:
    """The LoRA adapter an OpenAI ``model`` field selects: the one it names, else the base
    model (``"tgi"``, the served model's name or any other: OpenAI clients always send
    one, and TGI serves an unknown adapter with the base model too)."""
    return model if model in adapter_ids else None


def _flat_content(message: Message) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    if content is not None:
        return "".join(
            chunk.text if isinstance(chunk, TextChunk) else f"![]({chunk.image_url.url})"
            for chunk in content
        )
    calls = [
        {
            "id": call.id,
            "type": call.type,
            "function": {
                "description": call.function.description,
                "name": call.function.name,
                "arguments": _arguments_text(call.function.schema),
            },
        }
        for call in message.tool_calls or ()
    ]
    return encode_json(calls).decode()


def _arguments_text(arguments: Any) -> str:
    # OpenAI clients send arguments as a JSON string already; keep it as is.
    return arguments if isinstance(arguments, str) else encode_json(arguments).decode()
