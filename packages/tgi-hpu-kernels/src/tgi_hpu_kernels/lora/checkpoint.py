"""PEFT LoRA adapters on disk: ``adapter_config.json`` + ``adapter_model.safetensors``.

An adapter is read into one low-rank pair per adapted checkpoint projection (HF names such
as ``model.layers.0.self_attn.q_proj``): ``A`` ``[r, in]`` and ``B`` ``[out, r]`` with the
adapter's scale (``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA) folded into ``B``. What
PEFT can save but this server does not apply (DoRA, trained biases, extra modules,
embedding adapters, per-module alphas) is refused in one line rather than ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import Tensor

from tgi_core.settings.lora import LoraAdapter
from tgi_core.settings.slices import RunnerSettings

__all__ = ["LoraWeights", "adapter_folder", "read_adapter"]

_FILES = ("adapter_config.json", "adapter_model.safetensors")
_PREFIX = "base_model.model."
# config keys whose non-default value changes the adapter's output in ways we do not apply
_UNSUPPORTED = {
    "use_dora": "DoRA",
    "fan_in_fan_out": "fan_in_fan_out",
    "modules_to_save": "modules_to_save",
    "alpha_pattern": "per-module alphas (alpha_pattern)",
}


@dataclass(frozen=True)
class LoraWeights:
    """One adapter: projection name -> (A ``[r, in]``, scaled B ``[out, r]``)."""

    adapter_id: str
    pairs: dict[str, tuple[Tensor, Tensor]]


def adapter_folder(adapter: LoraAdapter, settings: RunnerSettings) -> Path:
    """The local folder of ``adapter``: its ``path``, or its hub repository downloaded.

    Raises:
        ValueError: no such folder, or the download failed.
    """
    if adapter.path is not None:
        folder = Path(adapter.path).expanduser()
        if not folder.is_dir():
            raise ValueError(f"LoRA adapter {adapter.id!r}: {folder} is not a folder")
        return folder
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                adapter.id,
                revision=adapter.revision,
                token=settings.hf_token,
                cache_dir=settings.huggingface_hub_cache,
                allow_patterns=list(_FILES),
                local_files_only=settings.hf_hub_offline,
            )
        )
    # offline, unknown or gated repositories raise many types; all mean the same here
    except Exception as err:
        raise ValueError(
            f"LoRA adapter {adapter.id!r} is not a local path and could not be fetched from "
            f"the Hugging Face Hub ({type(err).__name__}); give it as id=/path/to/adapter"
        ) from err


def _config(adapter_id: str, folder: Path) -> dict[str, Any]:
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"LoRA adapter {adapter_id!r}: {folder} lacks {', '.join(missing)} "
            "(a PEFT adapter saved as safetensors)"
        )
    config: dict[str, Any] = json.loads((folder / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(
            f"LoRA adapter {adapter_id!r} is a {config['peft_type']} adapter; only LORA is served"
        )
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise ValueError(f"LoRA adapter {adapter_id!r} uses {what}, which is not supported")
    if config.get("bias", "none") != "none":
        raise ValueError(
            f"LoRA adapter {adapter_id!r} trains biases (bias={config['bias']!r}), "
            "which is not supported"
        )
    return config


def read_adapter(adapter_id: str, folder: Path) -> LoraWeights:
    """Reads and checks the PEFT adapter in ``folder``.

    Raises:
        ValueError: missing files, an unsupported option, or tensors that are not LoRA pairs.
    """
    config = _config(adapter_id, folder)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    halves: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(_PREFIX)
        for half in ("lora_A", "lora_B"):
            suffix = f".{half}.weight"
            if name.endswith(suffix):
                halves.setdefault(name.removesuffix(suffix), {})[half] = tensor
                break
        else:
            raise ValueError(
                f"LoRA adapter {adapter_id!r} holds {key!r}, which is not a LoRA A/B weight "
                "of a linear layer"
            )
    alpha = float(config.get("lora_alpha", 8))
    pairs = {}
    for name, pair in halves.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(f"LoRA adapter {adapter_id!r} has only half of {name}'s pair")
        a, b = pair["lora_A"], pair["lora_B"]
        rank = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != rank:
            raise ValueError(
                f"LoRA adapter {adapter_id!r}: {name}'s A {tuple(a.shape)} and "
                f"B {tuple(b.shape)} are not a rank-r pair"
            )
        scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        pairs[name] = (a.float(), b.float() * scale)
    if not pairs:
        raise ValueError(f"LoRA adapter {adapter_id!r} adapts no layer")
    return LoraWeights(adapter_id, pairs)
