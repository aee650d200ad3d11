"""Medusa heads: draft tokens from the last hidden state (``--speculate`` with a Medusa model).

A Medusa checkpoint, as TGI reads it, is a folder whose ``config.json`` names
``medusa_num_heads``, ``medusa_num_layers`` and the ``base_model_name_or_path`` the heads
were trained on, with the heads in ``medusa_lm_head.safetensors``. Head ``k`` is
``medusa_num_layers`` residual blocks ``x + silu(W x + b)`` and a vocabulary projection; on
the hidden state of position ``p`` it guesses the token at ``p + 2 + k`` (the model's own
head gives ``p + 1``). The runner proposes each sequence's guesses with its step's tokens
(``SequenceOutput.draft``); the scheduler sends them back as the next step's draft, which
is verified like an n-gram one, so outputs stay those of plain decoding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import msgspec
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from tgi_core.contract import SequenceOutput
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.loader import resolve_source

__all__ = ["MedusaCheckpoint", "MedusaHeads", "read_medusa", "with_drafts", "with_medusa"]

_HEADS_FILE = "medusa_lm_head.safetensors"


@dataclass(frozen=True, slots=True)
class MedusaCheckpoint:
    folder: Path
    base_model: str  # the model id the heads extend
    num_heads: int
    num_layers: int


def read_medusa(folder: Path) -> MedusaCheckpoint | None:
    """The Medusa checkpoint in ``folder``, or None when it holds a plain model.

    Raises:
        ValueError: a Medusa config without its base model or its heads' weights.
    """
    config_path = folder / "config.json"
    if not folder.is_dir() or not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    if "medusa_num_heads" not in config:
        return None
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"Medusa checkpoint {folder} names no base_model_name_or_path")
    if not (folder / _HEADS_FILE).is_file():
        raise ValueError(f"Medusa checkpoint {folder} lacks {_HEADS_FILE}")
    return MedusaCheckpoint(
        folder, str(base), int(config["medusa_num_heads"]), int(config.get("medusa_num_layers", 1))
    )


class _ResBlock(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + torch.nn.functional.silu(self.linear(x))
        return out


class MedusaHeads(nn.ModuleList):
    """The heads, named as in ``medusa_lm_head.safetensors`` (``{head}.{block}.linear.*``,
    ``{head}.{num_layers}.weight``)."""

    def __init__(self, hidden_size: int, vocab_size: int, num_heads: int, num_layers: int) -> None:
        super().__init__(
            nn.Sequential(
                *(_ResBlock(hidden_size) for _ in range(num_layers)),
                nn.Linear(hidden_size, vocab_size, bias=False),
            )
            for _ in range(num_heads)
        )

    @classmethod
    def load(
        cls,
        checkpoint: MedusaCheckpoint,
        *,
        hidden_size: int,
        vocab_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> MedusaHeads:
        """The heads of ``checkpoint`` for a model of these sizes.

        Raises:
            ValueError: the weights do not fit (missing, extra or misshapen tensors).
        """
        heads = cls(hidden_size, vocab_size, checkpoint.num_heads, checkpoint.num_layers)
        weights = load_file(str(checkpoint.folder / _HEADS_FILE))
        try:
            heads.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[0]
            raise ValueError(f"Medusa heads in {checkpoint.folder} do not fit: {first}") from None
        return heads.to(device=device, dtype=dtype).eval()

    @torch.inference_mode()
    def propose(self, hidden: Tensor, num_tokens: int) -> list[tuple[int, ...]]:
        """Each row's guesses ``[hidden rows, hidden]`` -> the first ``num_tokens`` heads'
        argmax tokens per row."""
        guesses = torch.stack([head(hidden).argmax(-1) for head in list(self)[:num_tokens]], 1)
        return [tuple(row) for row in guesses.tolist()]


def with_medusa(settings: RunnerSettings) -> tuple[RunnerSettings, MedusaCheckpoint | None]:
    """A Medusa model id: the settings of its base model (``--speculate`` its heads unless
    set, as in TGI), and its heads.

    Raises:
        ValueError: ``--speculate`` asks more tokens than the heads guess (TGI's words).
    """
    if not settings.model_id:
        return settings, None
    medusa = read_medusa(resolve_source(settings).path)
    if medusa is None:
        return settings, None
    if settings.speculate > medusa.num_heads:
        raise ValueError(
            f"Speculate is set to `{settings.speculate}` but this medusa models only has "
            f"`{medusa.num_heads}` heads, please make them match"
        )
    speculate = settings.speculate or medusa.num_heads
    return replace(settings, model_id=medusa.base_model, speculate=speculate), medusa


def with_drafts(
    heads: MedusaHeads | None,
    outputs: Sequence[SequenceOutput],
    hidden: Tensor,
    last_rows: Sequence[int],
    num_tokens: int,
) -> tuple[SequenceOutput, ...]:
    """``outputs``, each with the heads' guesses from the hidden row of its last token
    (``last_rows``); without heads, as they are."""
    if heads is None:
        return tuple(outputs)
    rows = torch.tensor(last_rows, device=hidden.device)
    guesses = heads.propose(hidden.index_select(0, rows), num_tokens)
    return tuple(
        out if out.error is not None else msgspec.structs.replace(out, draft=draft)
        for out, draft in zip(outputs, guesses, strict=True)
    )
