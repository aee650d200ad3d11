"""The registry: ``llava_next`` resolves to LLaVA-NeXT (its text model's place in the
checkpoint, both key layouts); a text checkpoint has no family; a VLM of another family
gets no hooks and is refused by the runner in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.loader import read_model_config
from tgi_hpu_kernels.models import UnsupportedModelError
from tgi_vlm.llava_next.family import LLAVA_NEXT
from tgi_vlm.llava_next.prompt import LlavaNextPromptEncoder
from tgi_vlm.prompt_encoding import prompt_encoder_for
from tgi_vlm.registry import FAMILIES, family_of, read_family
from tgi_vlm.runner_parts import runner_parts_for

from .conftest import tiny_tokenizer


def test_llava_next_resolves(llava_folder: Path) -> None:
    assert family_of({"model_type": "llava_next"}) is LLAVA_NEXT
    assert read_family(llava_folder) is LLAVA_NEXT
    assert isinstance(
        prompt_encoder_for(str(llava_folder), tiny_tokenizer()), LlavaNextPromptEncoder
    )
    assert all(family.model_type == key for key, family in FAMILIES.items())


def test_llava_next_text_model_config(llava_folder: Path) -> None:
    raw = json.loads((llava_folder / "config.json").read_text())
    text = LLAVA_NEXT.nested_model.config(raw)
    assert text["model_type"] == "llama"
    assert text["hidden_size"] == raw["text_config"]["hidden_size"]
    assert "vision_config" not in text
    config = LLAVA_NEXT.nested_model.config({"model_type": "llava_next", "text_config": {}})
    assert config == {"model_type": "llama"}  # transformers' default text model


def test_llava_next_weight_names_both_layouts() -> None:
    t = torch.zeros(1)
    names = [
        "language_model.model.layers.0.mlp.up_proj.weight",  # hub / transformers 4
        "language_model.lm_head.weight",
        "model.language_model.norm.weight",  # transformers 5
        "lm_head.weight",
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "model.vision_tower.vision_model.post_layernorm.weight",
        "multi_modal_projector.linear_1.weight",
        "image_newline",
    ]
    renamed = [name for name, _ in LLAVA_NEXT.nested_model.weights((n, t) for n in names)]
    assert renamed == [
        "model.layers.0.mlp.up_proj.weight",
        "lm_head.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]


def test_text_checkpoint_has_no_family(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert read_family(tmp_path) is None
    assert read_family(tmp_path / "missing") is None
    assert prompt_encoder_for(str(tmp_path), tiny_tokenizer()) is None


def test_unknown_vlm_type_is_refused_in_one_line(llava_folder: Path, tmp_path: Path) -> None:
    for path in llava_folder.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    raw = json.loads((llava_folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(raw | {"model_type": "tiny_vlm"}))
    settings = RunnerSettings(model_id=str(tmp_path), base_image_tokens=64)
    assert runner_parts_for(settings) is None
    assert prompt_encoder_for(str(tmp_path), tiny_tokenizer()) is None
    with pytest.raises(UnsupportedModelError, match="Unsupported model type 'tiny_vlm'") as err:
        read_model_config(settings)
    assert "\n" not in str(err.value)
