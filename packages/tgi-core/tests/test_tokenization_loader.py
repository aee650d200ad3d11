"""Finding and reading tokenizer files: folders, GGUF files, Hub ids, template precedence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest

from tgi_core.testing import smollm2_gguf
from tgi_core.tokenization import ChatTemplateError, Tokenizer, TokenizerLoadError, load_tokenizer

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def folder(tmp_path: Path, smollm2: Tokenizer) -> Path:
    """A model folder holding SmolLM2's tokenizer as tokenizer.json."""
    smollm2.backend.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def _write(folder: Path, name: str, content: object) -> None:
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / name).write_text(text, encoding="utf-8")


def _rendered(tokenizer: Tokenizer) -> str:
    return tokenizer.apply_chat_template(MESSAGES)


def test_folder_with_tokenizer_config(folder: Path, smollm2: Tokenizer) -> None:
    _write(
        folder,
        "tokenizer_config.json",
        {
            "bos_token": {"content": "<|im_start|>", "special": True},
            "eos_token": "<|im_end|>",
            "chat_template": "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}",
            "model_max_length": 2048,
        },
    )
    tokenizer = load_tokenizer(str(folder))
    assert tokenizer.encode("Hello there 😀") == smollm2.encode("Hello there 😀")
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tokenizer.eos_token_ids == (2,)
    assert tokenizer.max_model_length == 2048
    assert _rendered(tokenizer) == "<|im_start|>Hi<|im_end|>"
    assert tokenizer.special_token_ids == smollm2.special_token_ids


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (("chat_template.json", "jinja", "config", "processor"), "standalone"),
        (("jinja", "config", "processor"), "jinja"),
        (("config", "processor"), "config"),
        (("processor",), "processor"),
    ],
)
def test_chat_template_precedence(folder: Path, files: tuple[str, ...], expected: str) -> None:
    config: dict[str, object] = {"eos_token": "<|im_end|>"}
    if "config" in files:
        config["chat_template"] = "config"
    _write(folder, "tokenizer_config.json", config)
    if "chat_template.json" in files:
        _write(folder, "chat_template.json", {"chat_template": "standalone"})
    if "jinja" in files:
        _write(folder, "chat_template.jinja", "jinja")
    if "processor" in files:
        _write(folder, "processor_config.json", {"chat_template": "processor"})
    assert _rendered(load_tokenizer(str(folder))) == expected


def test_template_list_takes_default_entry(folder: Path) -> None:
    templates = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "d"}]
    _write(folder, "tokenizer_config.json", {"chat_template": templates})
    assert _rendered(load_tokenizer(str(folder))) == "d"
    _write(folder, "tokenizer_config.json", {"chat_template": templates[:1]})
    tokenizer = load_tokenizer(str(folder))
    assert tokenizer.chat_template is None
    with pytest.raises(ChatTemplateError, match="template not found"):
        _rendered(tokenizer)


def test_tokenizer_config_path_replaces_the_folders(folder: Path, tmp_path: Path) -> None:
    _write(folder, "tokenizer_config.json", {"chat_template": "folder", "eos_token": "<|im_end|>"})
    override = tmp_path / "override" / "tokenizer_config.json"
    override.parent.mkdir()
    override.write_text(json.dumps({"chat_template": "override", "eos_token": "<|endoftext|>"}))
    tokenizer = load_tokenizer(str(folder), tokenizer_config_path=str(override))
    assert _rendered(tokenizer) == "override"
    assert tokenizer.eos_token_ids == (0,)
    # the override also applies to a GGUF model's template
    gguf_tokenizer = load_tokenizer(str(smollm2_gguf()), tokenizer_config_path=str(override))
    assert _rendered(gguf_tokenizer) == "override"
    with pytest.raises(TokenizerLoadError, match=r"missing\.json"):
        load_tokenizer(str(folder), tokenizer_config_path=str(tmp_path / "missing.json"))


@pytest.mark.parametrize(("eos", "expected"), [(2, (2,)), ([2, 0], (2, 0)), (None, (2,))])
def test_eos_ids_from_generation_config(
    folder: Path, eos: object, expected: tuple[int, ...]
) -> None:
    _write(folder, "tokenizer_config.json", {"eos_token": "<|im_end|>"})
    if eos is not None:
        _write(folder, "generation_config.json", {"eos_token_id": eos, "max_length": 20})
    assert load_tokenizer(str(folder)).eos_token_ids == expected


def test_special_tokens_map_fills_missing_tokens(folder: Path) -> None:
    _write(
        folder, "special_tokens_map.json", {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    )
    tokenizer = load_tokenizer(str(folder))
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert tokenizer.eos_token_ids == (2,)
    assert tokenizer.max_model_length is None


def test_no_limit_sentinel_means_unknown_length(folder: Path) -> None:
    _write(folder, "tokenizer_config.json", {"model_max_length": 1000000000000000019884624838656})
    assert load_tokenizer(str(folder)).max_model_length is None


@pytest.mark.parametrize(
    ("config", "prefix", "suffix"),
    [
        ({}, [1], []),
        ({"add_bos_token": False}, [], []),
        ({"add_eos_token": True}, [1], [2]),
    ],
)
def test_llama_tokenizer_class_gets_tgi_post_processor(
    folder: Path, smollm2: Tokenizer, config: dict[str, bool], prefix: list[int], suffix: list[int]
) -> None:
    _write(
        folder,
        "tokenizer_config.json",
        {
            "tokenizer_class": "LlamaTokenizerFast",
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            **config,
        },
    )
    tokenizer = load_tokenizer(str(folder))
    body = smollm2.encode("Hello world")
    assert tokenizer.encode("Hello world") == [*prefix, *body, *suffix]
    assert tokenizer.encode("Hello world", add_special_tokens=False) == body


def test_truncation_in_tokenizer_json_is_ignored(folder: Path) -> None:
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    data["truncation"] = {
        "direction": "Right",
        "max_length": 3,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    _write(folder, "tokenizer.json", data)
    assert len(load_tokenizer(str(folder)).encode("one two three four five six")) == 6


def test_folder_with_one_gguf(tmp_path: Path, smollm2: Tokenizer) -> None:
    shutil.copy(smollm2_gguf(), tmp_path / "model.gguf")
    _write(tmp_path, "chat_template.json", {"chat_template": "folder template"})
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.encode("héllo 😀") == smollm2.encode("héllo 😀")
    assert _rendered(tokenizer) == "folder template"  # folder files win over GGUF metadata
    assert tokenizer.eos_token_ids == smollm2.eos_token_ids
    (tmp_path / "other.gguf").symlink_to(tmp_path / "model.gguf")
    with pytest.raises(
        TokenizerLoadError, match=r"several \.gguf files \(model\.gguf, other\.gguf\)"
    ):
        load_tokenizer(str(tmp_path))


def test_local_errors_name_the_model(tmp_path: Path) -> None:
    with pytest.raises(TokenizerLoadError, match=r"no tokenizer\.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(TokenizerLoadError, match=r"no such model folder or file: \./nowhere"):
        load_tokenizer("./nowhere")
    text_file = tmp_path / "weights.bin"
    text_file.write_bytes(b"\0")
    with pytest.raises(TokenizerLoadError, match=r"not a \.gguf file"):
        load_tokenizer(str(text_file))
    broken = tmp_path / "broken"
    broken.mkdir()
    _write(broken, "tokenizer.json", "{not json")
    with pytest.raises(TokenizerLoadError, match="cannot read"):
        load_tokenizer(str(broken))


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_id_offline_without_cache_names_the_model(offline_hub: Path) -> None:
    with pytest.raises(TokenizerLoadError, match="'acme/no-such-model'") as error:
        load_tokenizer("acme/no-such-model", revision="main", hf_token="hf_x")
    assert "Hugging Face Hub" in str(error.value)


def test_hub_id_from_the_cache(offline_hub: Path, smollm2: Tokenizer) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--acme--tiny"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    smollm2.backend.save(str(snapshot / "tokenizer.json"))
    _write(snapshot, "tokenizer_config.json", {"eos_token": "<|im_end|>", "chat_template": "hub"})
    tokenizer = load_tokenizer("acme/tiny")
    assert tokenizer.encode("cached") == smollm2.encode("cached")
    assert _rendered(tokenizer) == "hub"
    assert tokenizer.eos_token_ids == (2,)
