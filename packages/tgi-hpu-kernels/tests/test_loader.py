"""Finding and reading checkpoints: errors that say what is wrong, strict weight loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.loader import (
    ModelLoadError,
    embedded_model_path,
    read_model_config,
    resolve_source,
)
from tgi_hpu_kernels.models import UnsupportedModelError


def test_embedded_default_is_the_smollm2_gguf():
    source = resolve_source(RunnerSettings(model_id=""))
    assert source.kind == "gguf"
    assert source.path == embedded_model_path() and source.path.is_file()


def test_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "README.md").write_text("nothing here")
    with pytest.raises(ModelLoadError, match=r"neither config.json .* \(found: README.md\)"):
        resolve_source(RunnerSettings(model_id=str(tmp_path)))


def test_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match=r"not a \.gguf checkpoint"):
        resolve_source(RunnerSettings(model_id=str(path)))


def test_unreachable_hub_model_says_what_to_do(tmp_path):
    settings = RunnerSettings(
        model_id="tgi-gaudi-tests/no-such-model", huggingface_hub_cache=str(tmp_path)
    )
    with pytest.raises(ModelLoadError, match="could not be fetched from the Hugging Face Hub"):
        resolve_source(settings)


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt3"}))
    save_file({"wte.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnsupportedModelError, match="Unsupported model type 'gpt3'"):
        read_model_config(RunnerSettings(model_id=str(tmp_path)))


def test_missing_and_misshapen_weights_are_refused(tiny_checkpoint, make_runner, tmp_path):
    folder, _ = tiny_checkpoint("mistral")
    tensors = load_file(str(folder / "model.safetensors"))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())

    partial = {k: v for k, v in tensors.items() if "layers.1.mlp.up_proj" not in k}
    save_file(partial, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing weights: \['model.layers.1.mlp.gate_up_proj"):
        make_runner(tmp_path)

    tensors["model.norm.weight"] = torch.ones(3)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"'model\.norm\.weight' has shape"):
        make_runner(tmp_path)
