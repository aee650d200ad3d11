"""The fallback for what paged attention cannot reach: transformers' model, recomputed.

Some transformers models keep their attention to themselves (ALiBi in BLOOM and MPT, the
local attention of GPT-Neo...), and on Gaudi optimum-habana's model classes do (their own
static KV cache and fused kernels). Neither can write our paged cache, so this fallback
keeps no KV cache at all: each step, every sequence's whole history (prompt and generated
tokens) runs through the model again, and the rows the step asked for are returned.
Correctness first: the cost of a step grows with the length of each sequence, where a
paged model's grows with the new tokens only.

A vision-language model whose language model cross-attends to its images runs
here too: its family's ``HistoryInputs`` (``tgi_vlm``) turns a sequence's images into the
model's inputs once, at its prefill, and adds the per-history ones (masks) every step.

The runner tells it which sequences a step holds (``begin_step``) and which ended
(``release``); it keeps each live sequence's token ids. Everything else (scheduling,
buckets, the prefix cache's accounting, sampling, grammars, speculation's verification)
is as for any model: the KV pool the runner allocates only does the scheduler's
accounting here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from tgi_core.contract import DecodeItem, ImageInput, PrefillItem, StepPlan
from tgi_hpu_kernels.attention import AttentionMetadata
from tgi_hpu_kernels.kv_cache import KVCache
from tgi_hpu_kernels.models.config import ModelConfig

__all__ = ["HistoryInputs", "RecomputingCausalLM", "TransformersModel"]


class HistoryInputs(Protocol):
    """A VLM family's extra model inputs for a sequence with images (``tgi_vlm`` implements
    it; the kernels name no family)."""

    def prepare(
        self, images: Sequence[ImageInput], *, dtype: torch.dtype, device: torch.device
    ) -> Any:
        """What the images give every step of their sequence (pixels), made once."""
        ...

    def inputs(self, prepared: Any, prompt: Sequence[int], length: int) -> Mapping[str, Tensor]:
        """Keyword inputs for a history of ``length`` tokens whose prompt is ``prompt``."""
        ...


class _Sequence(NamedTuple):
    history: list[int]
    num_prompt_tokens: int
    images: Any  # HistoryInputs.prepare's, or None


class TransformersModel(nn.Module):
    """What both transformers fallbacks share: transformers' model and its logits."""

    def __init__(self, hf_model: Any, config: ModelConfig) -> None:
        super().__init__()
        self.hf_model = hf_model
        self.config = config

    def ensure_positions(self, length: int) -> None:
        """Nothing to extend: transformers computes its positional encoding every step."""

    def compute_logits(self, hidden: Tensor) -> Tensor:
        """``[n, hidden]`` -> float32 ``[n, vocab]`` through the output embedding."""
        logits: Tensor = self.hf_model.get_output_embeddings()(hidden)
        return logits.float()


class RecomputingCausalLM(TransformersModel):
    """A transformers causal LM behind the runner's model interface, without a KV cache:
    ``begin_step`` -> ``forward`` (hidden states of the step's rows) -> ``compute_logits``."""

    def __init__(
        self, hf_model: Any, config: ModelConfig, history_inputs: HistoryInputs | None = None
    ) -> None:
        super().__init__(hf_model, config)
        self._history_inputs = history_inputs
        self._sequences: dict[int, _Sequence] = {}
        # this step's sequences: (first token row, the sequence, rows the step computes)
        self._step: list[tuple[int, _Sequence, int]] = []

    def begin_step(self, plan: StepPlan, token_offsets: Sequence[int]) -> None:
        """Records the histories of ``plan``'s sequences and where their rows go.

        A prefill brings its whole history; a decode appends its token (and draft) to the
        history kept since, cut at its position first (drafts rejected last step go).

        Raises:
            ValueError: a decode of a sequence this model never saw prefilled.
        """
        self._step = []
        items: Sequence[PrefillItem | DecodeItem] = plan.prefill or plan.decode
        for item, offset in zip(items, token_offsets, strict=True):
            if isinstance(item, PrefillItem):
                sequence = _Sequence(
                    list(item.token_ids), item.num_prompt_tokens, self._prepare(item.images)
                )
                rows = len(item.token_ids) - item.num_cached_tokens
            else:
                kept = self._sequences.get(item.request_id)
                if kept is None:
                    if item.request_id >= 0:
                        raise ValueError(f"sequence {item.request_id} was never prefilled here")
                    # warmup's dummy sequences
                    kept = _Sequence([item.token_id] * item.position, item.position, None)
                history = [*kept.history[: item.position], item.token_id, *item.draft]
                sequence = kept._replace(history=history)
                rows = 1 + len(item.draft)
            self._sequences[item.request_id] = sequence
            self._step.append((offset, sequence, rows))

    def _prepare(self, images: Sequence[ImageInput]) -> Any:
        if not images:
            return None
        if self._history_inputs is None:
            raise ValueError("this model does not take images")
        model = self.hf_model
        return self._history_inputs.prepare(images, dtype=model.dtype, device=model.device)

    def release(self, request_ids: Sequence[int]) -> None:
        """Forgets the histories of sequences that ended (finished, aborted, preempted)."""
        for request_id in request_ids:
            self._sequences.pop(request_id, None)

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor,
        attn: AttentionMetadata,
        kv: KVCache,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """The step's token rows -> final hidden states ``[N, hidden]`` (padding rows 0).

        Each sequence runs alone over its whole history (with its images' inputs); its last
        rows fill its rows."""
        if inputs_embeds is not None:
            raise ValueError("a model served through transformers takes no image embeddings")
        hidden = torch.zeros(
            input_ids.shape[0],
            self.config.hidden_size,
            dtype=self.hf_model.dtype,
            device=input_ids.device,
        )
        for offset, sequence, rows in self._step:
            history = sequence.history
            ids = torch.tensor([history], dtype=torch.long, device=input_ids.device)
            extra: Mapping[str, Tensor] = {}
            if sequence.images is not None and self._history_inputs is not None:
                prompt = history[: sequence.num_prompt_tokens]
                extra = self._history_inputs.inputs(sequence.images, prompt, len(history))
            out = self.hf_model.base_model(input_ids=ids, use_cache=False, **extra)
            hidden[offset : offset + rows] = out.last_hidden_state[0, -rows:]
        return hidden
