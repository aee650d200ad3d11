"""Chat templates rendered like transformers' ``apply_chat_template(tokenize=False)``.

transformers is only the reference here; ``tgi_core`` renders with jinja2 alone.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import pytest

from tgi_core.testing import smollm2_gguf
from tgi_core.tokenization import ChatTemplate, ChatTemplateError, Tokenizer, load_tokenizer

Messages = list[dict[str, Any]]

SYSTEM_TURNS: Messages = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3? Answer in français, s'il vous plaît 🙂"},
]
NO_SYSTEM: Messages = [{"role": "user", "content": "Hi!"}]

LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'].strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'].strip() + eos_token }}"
    "{% endif %}{% endfor %}"
)

TOOLS_TEMPLATE = """{%- set ns = namespace(system='') -%}
{%- if messages[0]['role'] == 'system' %}
    {%- set ns.system = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- endif %}
{{- bos_token }}
{%- if tools %}
<tools>
{% for tool in tools %}
{{ tool | tojson(indent=2) }}
{% endfor %}
</tools>
{%- endif %}
{%- if ns.system %}SYSTEM: {{ ns.system }}
{% endif %}
{%- for message in messages %}
    {%- if message['role'] == 'tool' %}{% continue %}{% endif %}
    {%- if loop.index > 4 %}{% break %}{% endif %}
    {%- if message['role'] == 'assistant' %}
ASSISTANT: {% generation %}{{ message['content'] }}{% endgeneration %}{{ eos_token }}
    {%- else %}
{{ message['role'] | upper }}: {{ message['content'] }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
ASSISTANT:
{%- endif %}"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Météo actuelle — température en °C",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "Ville, e.g. Zürich"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def reference(smollm2: Tokenizer) -> Any:
    """transformers' tokenizer over the same backend, used only to render templates."""
    import transformers

    tokenizer_class: Any = transformers.PreTrainedTokenizerFast
    return tokenizer_class(tokenizer_object=smollm2.backend, bos_token="<s>", eos_token="</s>")


def _expected(reference: Any, source: str, messages: Messages, **kwargs: Any) -> str:
    rendered: str = reference.apply_chat_template(
        messages, chat_template=source, tokenize=False, **kwargs
    )
    return rendered


@pytest.fixture(scope="module")
def smollm2_reference() -> Any:
    """transformers' own tokenizer for the SmolLM2 GGUF, template included."""
    from transformers import AutoTokenizer

    path = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("messages", [SYSTEM_TURNS, NO_SYSTEM, SYSTEM_TURNS[:3]])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_matches_transformers(
    smollm2: Tokenizer, smollm2_reference: Any, messages: Messages, add_generation_prompt: bool
) -> None:
    if messages[-1]["role"] == "assistant":  # TGI continues a final assistant message
        expected = smollm2_reference.apply_chat_template(
            messages, tokenize=False, continue_final_message=True
        )
    else:
        expected = smollm2_reference.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    rendered = smollm2.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert rendered == expected


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "  Hello  "}],
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! "},
            {"role": "user", "content": "Bye"},
        ],
    ],
)
def test_llama2_template_matches_transformers(reference: Any, messages: Messages) -> None:
    ours = ChatTemplate(LLAMA2_TEMPLATE, bos_token="<s>", eos_token="</s>")
    assert ours.render(messages, add_generation_prompt=False) == _expected(
        reference, LLAMA2_TEMPLATE, messages
    )


def test_raise_exception_becomes_template_error(reference: Any) -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    ours = ChatTemplate(LLAMA2_TEMPLATE, bos_token="<s>", eos_token="</s>")
    with pytest.raises(jinja2.TemplateError) as expected:
        _expected(reference, LLAMA2_TEMPLATE, messages)
    with pytest.raises(ChatTemplateError) as error:
        ours.render(messages)
    assert error.value.message == str(expected.value)
    assert error.value.message == (
        "Conversation roles must alternate user/assistant/user/assistant/..."
    )


@pytest.mark.parametrize("with_tools", [True, False])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_tools_template_matches_transformers(
    reference: Any, with_tools: bool, add_generation_prompt: bool
) -> None:
    messages = [
        *SYSTEM_TURNS[:2],
        {"role": "tool", "content": "ignored"},
        {"role": "assistant", "content": "calling"},
        {"role": "user", "content": "thanks"},
        {"role": "user", "content": "after the break"},
    ]
    tools = [WEATHER_TOOL] if with_tools else None
    ours = ChatTemplate(TOOLS_TEMPLATE, bos_token="<s>", eos_token="</s>")
    rendered = ours.render(messages, tools=tools, add_generation_prompt=add_generation_prompt)
    assert rendered == _expected(
        reference,
        TOOLS_TEMPLATE,
        messages,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
    )
    assert ("Météo actuelle" in rendered) == with_tools  # tojson keeps non-ASCII
    assert ours.uses_tools
    assert not ChatTemplate(LLAMA2_TEMPLATE).uses_tools


def test_continue_final_message_cuts_after_the_assistant_content(reference: Any) -> None:
    source = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>\n{% endfor %}"
    )
    source += "{% if add_generation_prompt %}<assistant>{% endif %}"
    messages = [{"role": "user", "content": "Write"}, {"role": "assistant", "content": "Once"}]
    ours = ChatTemplate(source).render(messages)
    assert ours == "<user>Write</user>\n<assistant>Once"
    assert ours == _expected(reference, source, messages, continue_final_message=True)


def test_content_chunks_are_flattened_like_tgi() -> None:
    template = ChatTemplate("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe "},
                {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}},
                {"type": "text", "text": " briefly."},
            ],
        }
    ]
    assert template.render(messages) == "[Describe ![](https://x.test/cat.png) briefly.]"


def test_none_values_are_dropped_and_extra_variables_passed() -> None:
    source = (
        "{% for m in messages %}{{ m['content'] }}"
        "{% if m['tool_calls'] is defined %}+calls{% endif %}{% endfor %}"
        "|{{ guideline }}|{{ bos_token }}|{{ eos_token is defined }}"
    )
    messages = [{"role": "assistant", "content": "x", "tool_calls": None}]
    rendered = ChatTemplate(source, bos_token="<s>").render(
        [*messages, {"role": "user", "content": "y"}], guideline="be kind"
    )
    assert rendered == "xy|be kind|<s>|False"


def test_strftime_now() -> None:
    rendered = ChatTemplate("{{ strftime_now('%Y-%m') }}").render([])
    assert rendered == datetime.now().strftime("%Y-%m")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{% for m in messages %}", "Unexpected end of template"),
        ("{{ messages[0]['content'].__class__.__mro__ }}", "unsafe"),
        ("{% set ns = namespace(_hidden=1) %}", "underscore"),
        ("{{ messages.append(1) }}", "unsafe"),
    ],
)
def test_template_failures_are_template_errors(source: str, message: str) -> None:
    with pytest.raises(ChatTemplateError, match=message):
        ChatTemplate(source).render([{"role": "user", "content": "x"}])


def test_missing_template_is_template_not_found(tmp_path: Path, smollm2: Tokenizer) -> None:
    smollm2.backend.save(str(tmp_path / "tokenizer.json"))
    tokenizer = load_tokenizer(str(tmp_path))
    with pytest.raises(ChatTemplateError, match=r"^template not found$"):
        tokenizer.apply_chat_template(NO_SYSTEM)


def test_variables_lists_what_the_template_reads() -> None:
    template = ChatTemplate("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}")
    assert template.variables == {"bos_token", "messages"}
    assert ChatTemplate("{% for %}").variables == frozenset()
