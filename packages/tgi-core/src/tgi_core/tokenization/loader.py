"""Find and load a model's tokenizer: a local folder, a ``.gguf`` file, or a Hub model id.

A folder holds ``tokenizer.json`` plus optional ``tokenizer_config.json``,
``special_tokens_map.json``, ``generation_config.json``, ``chat_template.json``,
``chat_template.jinja`` and ``processor_config.json`` (a folder holding a single ``.gguf`` and
no ``tokenizer.json`` is read as that GGUF). A Hub id is fetched with
``huggingface_hub.snapshot_download`` (tokenizer files only). The chat template is taken, as
TGI does, from ``chat_template.json``, then ``tokenizer_config.json``'s ``chat_template`` (a
string, or the entry named ``default`` of a list), then ``processor_config.json``; transformers'
``chat_template.jinja`` ranks right after ``chat_template.json``. ``tokenizer_config_path``
(``--tokenizer-config-path``) replaces the folder's ``tokenizer_config.json``.

This module reads files; the tokenizer itself is ``tokenizer.Tokenizer``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend
from tokenizers import processors

from tgi_core.tokenization.chat_template import ChatTemplate
from tgi_core.tokenization.gguf_metadata import GGUFMetadataError, read_gguf_metadata
from tgi_core.tokenization.gguf_tokenizer import GGUFTokenizerError, build_gguf_tokenizer
from tgi_core.tokenization.tokenizer import Tokenizer

__all__ = ["HUB_TOKENIZER_FILES", "TokenizerLoadError", "load_tokenizer"]

logger = logging.getLogger(__name__)

HUB_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "processor_config.json",
)
# transformers writes this sentinel (~1e30) as model_max_length when the model sets no limit
_NO_MAX_LENGTH = 10**20
_LLAMA_TOKENIZER_CLASSES = frozenset({"LlamaTokenizer", "LlamaTokenizerFast"})


class TokenizerLoadError(Exception):
    """The tokenizer of a model could not be found or read; the message names the model."""


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerLoadError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else None


def _token_text(value: object) -> str | None:
    """A special token as tokenizer_config writes it: a string or ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _template_from(value: object) -> str | None:
    """``chat_template`` as a string, or the ``default`` entry of a list of named templates."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for entry in value:
            if isinstance(entry, dict) and entry.get("name") == "default":
                template = entry.get("template")
                return template if isinstance(template, str) else None
    return None


def _chat_template_source(folder: Path | None, config: dict[str, Any]) -> str | None:
    if folder is not None:
        standalone = _read_json(folder / "chat_template.json")
        if standalone is not None and (found := _template_from(standalone.get("chat_template"))):
            return found
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            return jinja_file.read_text(encoding="utf-8")
    if found := _template_from(config.get("chat_template")):
        return found
    if folder is not None:
        processor = _read_json(folder / "processor_config.json")
        if processor is not None:
            return _template_from(processor.get("chat_template"))
    return None


def _generation_eos_ids(folder: Path) -> tuple[int, ...]:
    config = _read_json(folder / "generation_config.json") or {}
    eos = config.get("eos_token_id")
    if isinstance(eos, int) and not isinstance(eos, bool):
        return (eos,)
    if isinstance(eos, list):
        return tuple(i for i in eos if isinstance(i, int) and not isinstance(i, bool))
    return ()


def _max_model_length(config: dict[str, Any]) -> int | None:
    value = config.get("model_max_length")
    if isinstance(value, (int, float)) and 0 < value < _NO_MAX_LENGTH:
        return int(value)
    return None


def _llama_post_processor(
    backend: Backend, config: dict[str, Any], bos: str | None, eos: str | None
) -> processors.TemplateProcessing:
    """TGI's override for Llama tokenizers: BOS/EOS from ``add_bos_token``/``add_eos_token``.

    Old Llama ``tokenizer.json`` files lack the post-processor transformers adds in Python.
    """
    add_bos = bool(config.get("add_bos_token", True))
    add_eos = bool(config.get("add_eos_token", False))
    bos_id = backend.token_to_id(bos) if bos is not None else None
    eos_id = backend.token_to_id(eos) if eos is not None else None
    single: list[str] = []
    pair: list[str] = []
    special_tokens: list[tuple[str, int]] = []
    if add_bos and bos is not None and bos_id is not None:
        special_tokens.append((bos, bos_id))
        single.append(f"{bos}:0")
    single.append("$A:0")
    if add_eos and eos is not None and eos_id is not None:
        special_tokens.append((eos, eos_id))
        single.append(f"{eos}:0")
    pair.extend(single)
    if add_bos and bos is not None and bos_id is not None:
        pair.append(f"{bos}:1")
    pair.append("$B:1")
    if add_eos and eos is not None and eos_id is not None:
        pair.append(f"{eos}:1")
    return processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join(pair), special_tokens=special_tokens
    )


def _load_gguf(path: Path, config: dict[str, Any], folder: Path | None) -> Tokenizer:
    try:
        info = build_gguf_tokenizer(read_gguf_metadata(path))
    except (GGUFMetadataError, GGUFTokenizerError, OSError) as exc:
        raise TokenizerLoadError(f"cannot build the tokenizer of {path}: {exc}") from exc
    source = _chat_template_source(folder, config) or info.chat_template
    template = (
        ChatTemplate(source, bos_token=info.bos_token, eos_token=info.eos_token) if source else None
    )
    return Tokenizer(
        info.backend,
        bos_token=info.bos_token,
        eos_token=info.eos_token,
        eos_token_ids=info.eos_token_ids,
        chat_template=template,
        max_model_length=_max_model_length(config) or info.max_model_length,
    )


def _load_folder(folder: Path, override: dict[str, Any] | None, model_id: str) -> Tokenizer:
    config = override if override is not None else _read_json(folder / "tokenizer_config.json")
    config = config or {}
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        ggufs = sorted(folder.glob("*.gguf"))
        if len(ggufs) == 1:
            return _load_gguf(ggufs[0], config, folder)
        found = f"several .gguf files ({', '.join(p.name for p in ggufs)})" if ggufs else "none"
        raise TokenizerLoadError(
            f"cannot load the tokenizer of model {model_id!r}: no tokenizer.json in {folder} "
            f"(GGUF files: {found})"
        )
    try:
        backend = Backend.from_file(str(tokenizer_file))
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
        raise TokenizerLoadError(f"cannot read {tokenizer_file}: {exc}") from exc
    special_map = _read_json(folder / "special_tokens_map.json") or {}
    bos = _token_text(config.get("bos_token")) or _token_text(special_map.get("bos_token"))
    eos = _token_text(config.get("eos_token")) or _token_text(special_map.get("eos_token"))
    if config.get("tokenizer_class") in _LLAMA_TOKENIZER_CLASSES:
        backend.post_processor = _llama_post_processor(backend, config, bos, eos)
    source = _chat_template_source(folder, config)
    return Tokenizer(
        backend,
        bos_token=bos,
        eos_token=eos,
        eos_token_ids=_generation_eos_ids(folder),
        chat_template=ChatTemplate(source, bos_token=bos, eos_token=eos) if source else None,
        max_model_length=_max_model_length(config),
    )


def _looks_local(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or model_id.endswith(".gguf")


def _download(model_id: str, revision: str | None, hf_token: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        folder = snapshot_download(
            repo_id=model_id,
            revision=revision,
            token=hf_token,
            allow_patterns=list(HUB_TOKENIZER_FILES),
        )
    except (OSError, ValueError, EntryNotFoundError) as exc:
        raise TokenizerLoadError(
            f"cannot load the tokenizer of model {model_id!r}: it is not a local folder or file, "
            f"and the Hugging Face Hub did not provide it ({type(exc).__name__}: {exc})"
        ) from exc
    return Path(folder)


def load_tokenizer(
    model_id: str,
    *,
    revision: str | None = None,
    hf_token: str | None = None,
    tokenizer_config_path: str | None = None,
) -> Tokenizer:
    """Load the tokenizer of ``model_id``: a local folder, a ``.gguf`` file, or a Hub id.

    Args:
        model_id: folder, ``.gguf`` path, or Hub repository id (``org/name``).
        revision: Hub revision (branch, tag or commit); ignored for local paths.
        hf_token: Hub token for gated or private models.
        tokenizer_config_path: a ``tokenizer_config.json`` used instead of the model's.

    Raises:
        TokenizerLoadError: nothing usable found; offline or unknown Hub ids included.
    """
    override = None
    if tokenizer_config_path is not None:
        override = _read_json(Path(tokenizer_config_path))
        if override is None:
            raise TokenizerLoadError(f"tokenizer config {tokenizer_config_path} is not a JSON file")
    path = Path(model_id).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise TokenizerLoadError(f"{model_id} is a file but not a .gguf file")
        return _load_gguf(path, override or {}, None)
    if path.is_dir():
        return _load_folder(path, override, model_id)
    if _looks_local(model_id):
        raise TokenizerLoadError(f"no such model folder or file: {model_id}")
    logger.info("Fetching the tokenizer of %s from the Hugging Face Hub", model_id)
    return _load_folder(_download(model_id, revision, hf_token), override, model_id)
