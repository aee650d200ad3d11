"""Reading a HF checkpoint folder: ``config.json`` and ``*.safetensors`` shards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import Tensor

from tgi_hpu_kernels.loader.source import ModelLoadError

__all__ = ["iter_safetensors", "read_hf_config"]


def read_hf_config(folder: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder."""
    try:
        raw: dict[str, Any] = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"cannot read {folder / 'config.json'}: {err}") from err
    return raw


def iter_safetensors(folder: Path) -> Iterator[tuple[str, Tensor]]:
    """Every tensor of every shard, by checkpoint name, one at a time (on the CPU)."""
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ModelLoadError(f"{folder} has no *.safetensors files")
    for shard in shards:
        with safe_open(shard, framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, handle.get_tensor(name)
