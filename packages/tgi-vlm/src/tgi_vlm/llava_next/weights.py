"""Loading LLaVA-NeXT's vision weights from a safetensors checkpoint folder.

Only ``vision_tower.*``, ``multi_modal_projector.*`` and ``image_newline`` are read (the
language model's tensors are never materialised here). Three key layouts exist:

- Hub checkpoints and transformers 4 before 4.52: ``vision_tower.vision_model.<clip>``,
  ``multi_modal_projector.*``, ``image_newline``;
- transformers 4.52+: the same under ``model.`` (``model.vision_tower.vision_model.<clip>``);
- transformers 5 (its ``CLIPVisionModel`` lost the ``vision_model`` level):
  ``vision_tower.<clip>`` on disk, ``model.vision_tower.<clip>`` in memory.

All map to this package's names (``vision_tower.<clip>``). Sharded checkpoints are read
through ``model.safetensors.index.json`` so that only shards holding vision weights are opened.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from tgi_hpu_kernels.loader.source import ModelLoadError
from tgi_vlm.llava_next.config import LlavaNextConfig
from tgi_vlm.llava_next.vision import LlavaNextVision

__all__ = ["load_llava_next_vision", "vision_key"]

_INDEX_FILE = "model.safetensors.index.json"


def vision_key(name: str) -> str | None:
    """This package's parameter name for a checkpoint tensor, or None if not a vision one."""
    name = name.removeprefix("model.")
    if name.startswith("vision_tower.vision_model."):
        name = "vision_tower." + name.removeprefix("vision_tower.vision_model.")
    if name == "image_newline" or name.startswith(("vision_tower.", "multi_modal_projector.")):
        return name
    return None


def load_llava_next_vision(
    folder: Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    config: LlavaNextConfig | None = None,
) -> LlavaNextVision:
    """Builds the vision side of the checkpoint in ``folder`` and fills its weights.

    Args:
        folder: holds ``config.json`` and ``*.safetensors`` (one file or shards).
        dtype, device: where and how the weights live.
        config: the parsed ``config.json`` (read from ``folder`` when None).

    Raises:
        ModelLoadError: no safetensors files, or an unreadable index.
        ValueError: a vision weight is missing or has the wrong shape, or the config asks
            for what ``LlavaNextVision`` cannot run (the ``full`` feature strategy).
    """
    config = config or LlavaNextConfig.from_folder(folder)
    with torch.device("meta"):
        module = LlavaNextVision(config)
    expected = {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}
    state: dict[str, Tensor] = {}
    for key, tensor in _vision_tensors(folder):
        # Layers past the selected one, post_layernorm and old position_ids are not used.
        if key not in expected:
            continue
        if tuple(tensor.shape) != expected[key]:
            msg = f"{key}: checkpoint shape {tuple(tensor.shape)}, expected {expected[key]}"
            raise ValueError(msg)
        state[key] = tensor.to(device=device, dtype=dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"{folder} lacks {len(missing)} vision weights: {shown}")
    module.load_state_dict(state, assign=True)
    return module.eval()


def _vision_tensors(folder: Path) -> Iterator[tuple[str, Tensor]]:
    """(our name, tensor) for every vision tensor of the checkpoint, read one at a time."""
    for shard in _shards(folder):
        with safe_open(shard, framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                key = vision_key(name)
                if key is not None:
                    yield key, handle.get_tensor(name)


def _shards(folder: Path) -> list[Path]:
    index = folder / _INDEX_FILE
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise ModelLoadError(f"cannot read {index}: {err}") from err
        names = {file for name, file in weight_map.items() if vision_key(name) is not None}
        return [folder / name for name in sorted(names)]
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ModelLoadError(f"{folder} has no *.safetensors files")
    return shards
