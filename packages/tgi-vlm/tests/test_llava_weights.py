"""Checkpoint key layouts and ``load_llava_next_vision``'s errors: the same tensors are read
from hub / transformers 4.52+ / transformers 5 layouts, single files or shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tgi_hpu_kernels.loader.source import ModelLoadError
from tgi_vlm.llava_next import load_llava_next_vision
from tgi_vlm.llava_next.weights import vision_key

_MISSING = "vision_tower.encoder.layers.1.mlp.fc2.weight"


@pytest.mark.parametrize(
    ("name", "key"),
    [
        # Hub checkpoints, transformers 4 before 4.52.
        ("vision_tower.vision_model.embeddings.patch_embedding.weight",
         "vision_tower.embeddings.patch_embedding.weight"),
        ("multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.weight"),
        ("image_newline", "image_newline"),
        ("language_model.model.layers.0.mlp.up_proj.weight", None),
        ("language_model.lm_head.weight", None),
        # transformers 4.52+: everything under model.
        ("model.vision_tower.vision_model.encoder.layers.3.self_attn.q_proj.bias",
         "vision_tower.encoder.layers.3.self_attn.q_proj.bias"),
        ("model.multi_modal_projector.linear_2.bias", "multi_modal_projector.linear_2.bias"),
        ("model.image_newline", "image_newline"),
        ("model.language_model.embed_tokens.weight", None),
        ("lm_head.weight", None),
        # transformers 5: no vision_model level (on disk without model., in memory with it).
        ("vision_tower.pre_layrnorm.weight", "vision_tower.pre_layrnorm.weight"),
        ("model.vision_tower.post_layernorm.bias", "vision_tower.post_layernorm.bias"),
    ],
)  # fmt: skip
def test_vision_key(name: str, key: str | None) -> None:
    assert vision_key(name) == key


@pytest.fixture(scope="module")
def reference_state(tiny_checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_llava_next_vision(tiny_checkpoint).state_dict()


def _rewrite(source: Path, target: Path, rename: dict[str, str]) -> dict[str, torch.Tensor]:
    """Copies the checkpoint to ``target`` with key prefixes renamed (``rename``: old -> new)."""
    tensors = load_file(source / "model.safetensors")
    renamed = {}
    for name, tensor in tensors.items():
        prefix = next((old for old in rename if name.startswith(old)), None)
        renamed[name if prefix is None else rename[prefix] + name.removeprefix(prefix)] = tensor
    target.mkdir(exist_ok=True)
    shutil.copy(source / "config.json", target / "config.json")
    save_file(renamed, target / "model.safetensors")
    return renamed


def _assert_same_state(folder: Path, reference: dict[str, torch.Tensor]) -> None:
    state = load_llava_next_vision(folder).state_dict()
    assert state.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize(
    "rename",
    [
        {"vision_tower.": "vision_tower.vision_model.", "language_model.": "language_model.model."},
        {
            "vision_tower.": "model.vision_tower.vision_model.",
            "multi_modal_projector.": "model.multi_modal_projector.",
            "image_newline": "model.image_newline",
            "language_model.": "model.language_model.",
        },
    ],
    ids=["hub", "transformers-4.52"],
)
def test_older_layouts_load_the_same_weights(
    rename: dict[str, str],
    tiny_checkpoint: Path,
    tmp_path: Path,
    reference_state: dict[str, torch.Tensor],
) -> None:
    renamed = _rewrite(tiny_checkpoint, tmp_path, rename)
    assert any(name.startswith(tuple(rename.values())) for name in renamed)
    _assert_same_state(tmp_path, reference_state)


def test_only_the_layers_up_to_the_selected_one_are_built(
    reference_state: dict[str, torch.Tensor], tiny_checkpoint: Path
) -> None:
    # Layer -2 of 3: layers 0 and 1; the last layer and post_layernorm are skipped.
    layers = {name.split(".")[3] for name in reference_state if ".encoder.layers." in name}
    assert layers == {"0", "1"}
    assert not any("post_layernorm" in name for name in reference_state)
    vision = load_llava_next_vision(tiny_checkpoint, dtype=torch.bfloat16)
    assert {parameter.dtype for parameter in vision.parameters()} == {torch.bfloat16}
    assert not vision.training


def test_sharded_checkpoint_opens_only_vision_shards(
    tiny_checkpoint: Path, tmp_path: Path, reference_state: dict[str, torch.Tensor]
) -> None:
    tensors = load_file(tiny_checkpoint / "model.safetensors")
    vision = {name: t for name, t in tensors.items() if vision_key(name) is not None}
    text = {name: t for name, t in tensors.items() if vision_key(name) is None}
    first = dict(list(vision.items())[: len(vision) // 2])
    second = {name: t for name, t in vision.items() if name not in first}
    save_file(first, tmp_path / "model-00001-of-00003.safetensors")
    save_file(second, tmp_path / "model-00002-of-00003.safetensors")
    # Not a safetensors file at all: loading fails if this shard is opened.
    (tmp_path / "model-00003-of-00003.safetensors").write_bytes(b"not safetensors")
    weight_map = {name: "model-00001-of-00003.safetensors" for name in first}
    weight_map |= {name: "model-00002-of-00003.safetensors" for name in second}
    weight_map |= {name: "model-00003-of-00003.safetensors" for name in text}
    index = {"metadata": {}, "weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "config.json")
    _assert_same_state(tmp_path, reference_state)


def test_missing_weight_is_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    tensors = load_file(tiny_checkpoint / "model.safetensors")
    del tensors[_MISSING]
    save_file(tensors, tmp_path / "model.safetensors")
    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError) as raised:
        load_llava_next_vision(tmp_path)
    assert str(raised.value) == f"{tmp_path} lacks 1 vision weights: {_MISSING}"


def test_wrong_shape_is_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    tensors = load_file(tiny_checkpoint / "model.safetensors")
    tensors["image_newline"] = torch.zeros(65)
    save_file(tensors, tmp_path / "model.safetensors")
    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"image_newline: checkpoint shape \(65,\), expected"):
        load_llava_next_vision(tmp_path)


def test_folder_without_safetensors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match="has no"):
        load_llava_next_vision(tmp_path)


def test_unreadable_index(tiny_checkpoint: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_llava_next_vision(tmp_path)
