"""A text model inside a multimodal checkpoint, found from the caller's ``NestedTextModel``:
the same weights as the plain checkpoint, extra tensors skipped; without the description
the outer model type is unknown here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tgi_core.nested_model import NestedTextModel
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.loader import load_model, read_model_config
from tgi_hpu_kernels.models import UnsupportedModelError

# a made-up family: the kernels must serve any caller's layout, naming none themselves
NESTED = NestedTextModel(
    config_key="inner_config",
    default_model_type="llama",
    weight_prefixes=(("outer.text.", "model."), ("outer.head.", "lm_head.")),
)


def _nest(plain: Path, folder: Path) -> None:
    """``plain``'s llama under NESTED's names, with a tower tensor and an outer config."""
    config = json.loads((plain / "config.json").read_text())
    eos = config.pop("eos_token_id")
    del config["model_type"]  # the default applies
    outer = {"model_type": "tiny_vlm", "inner_config": config, "eos_token_id": eos}
    (folder / "config.json").write_text(json.dumps(outer))
    renamed = {"tower.weight": torch.zeros(3)}
    for name, tensor in load_file(str(plain / "model.safetensors")).items():
        if name.startswith("model."):
            renamed["outer.text." + name.removeprefix("model.")] = tensor
        else:
            renamed["outer.head." + name.removeprefix("lm_head.")] = tensor
    save_file(renamed, str(folder / "model.safetensors"))


def _state(folder: Path, nested: NestedTextModel | None) -> dict[str, torch.Tensor]:
    settings = RunnerSettings(model_id=str(folder), dtype="float32", max_total_tokens=64)
    loaded = load_model(
        settings, backend=CpuDevice(), device=torch.device("cpu"), nested_model=nested
    )
    assert loaded.config.eos_token_ids  # inherited from the outer config
    return loaded.model.state_dict()


def test_nested_text_model_loads_the_plain_weights(tiny_checkpoint, tmp_path):
    plain = tiny_checkpoint("llama")[0]
    _nest(plain, tmp_path)
    expected = _state(plain, None)
    got = _state(tmp_path, NESTED)
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)


def test_without_the_description_the_outer_type_is_refused(tiny_checkpoint, tmp_path):
    _nest(tiny_checkpoint("llama")[0], tmp_path)
    with pytest.raises(UnsupportedModelError, match="'tiny_vlm'") as err:
        read_model_config(RunnerSettings(model_id=str(tmp_path)))
    assert "\n" not in str(err.value)
