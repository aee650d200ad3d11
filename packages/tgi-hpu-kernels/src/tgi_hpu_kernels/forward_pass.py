"""One plan's forward pass, in step with the other shards: ``ForwardPass(plan)``.

Every rank runs it for every plan: rank 0 from ``TorchModelRunner.execute``, the others from
``serve_shard``, in the same order of collectives (row-parallel all-reduces, the
vocab-parallel embedding's sum and head's gather, a VLM prefill's broadcast embeddings).

- The step's tensors are built first: a plan that cannot be built fails on rank 0 before
  it is sent, so the shards never see it (they stay in step).
- Rank 0 then sends the plan; if anything fails after that, the shards wait in collectives
  rank 0 will not join, so rank 0 ``abandon``s the group (they fail at once) and re-raises.
- The head runs twice at most: on each sequence's last row (every row of a speculative
  step), and on the new prompt rows of the items asking for prompt logprobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from tgi_core.contract import DecodeShape, PrefillItem, PrefillShape, StepPlan
from tgi_hpu_kernels.device import Device
from tgi_hpu_kernels.device.base import StepRunner
from tgi_hpu_kernels.lora import LoraAdapters
from tgi_hpu_kernels.models.llama import LlamaForCausalLM
from tgi_hpu_kernels.models.transformers_recompute import RecomputingCausalLM
from tgi_hpu_kernels.parallel.group import TensorParallelGroup
from tgi_hpu_kernels.prompt_embedding import PromptEmbedder
from tgi_hpu_kernels.served_model import ServedModel
from tgi_hpu_kernels.speculative import verify_items, verify_shape
from tgi_hpu_kernels.step_inputs import KVLayout, StepInputs, build_decode, build_prefill

__all__ = ["ForwardPass", "ForwardResult", "is_speculative"]


def is_speculative(plan: StepPlan) -> bool:
    """A decode step verifying drafts (``--speculate``): every row is sampled."""
    return any(item.draft for item in plan.decode)


class ForwardResult(NamedTuple):
    logits: Tensor  # float32 [rows, vocab]: each sequence's last row (every row: speculative)
    hidden: Tensor  # the last hidden states of every row
    inputs: StepInputs
    prompt_logits: Tensor | None  # the new prompt rows of items asking for prompt logprobs


class ForwardPass:
    """Runs plans through ``model`` on ``device`` (see the module docstring)."""

    def __init__(
        self,
        model: ServedModel,
        device: Device,
        layout: KVLayout,
        step: StepRunner,
        *,
        group: TensorParallelGroup | None,
        lora: LoraAdapters | None,
        prompt_embedder: PromptEmbedder | None,
    ) -> None:
        self._model = model
        self._device = device
        self._layout = layout
        self._step = step
        self._group = group
        self._lora = lora
        self._prompt_embedder = prompt_embedder

    def __call__(self, plan: StepPlan) -> ForwardResult:
        if plan.prefill and plan.decode:
            raise ValueError("a plan holds prefills or decodes, never both")
        inputs = self._build(plan)  # first: a plan that fails here never reaches the shards
        sender = self._group if self._group is not None and self._group.rank == 0 else None
        if sender is not None:
            sender.send_plan(plan)  # every shard runs the same forward pass
        try:
            return self._run(plan, inputs)
        except BaseException as error:
            if sender is not None:  # the shards wait in collectives this rank will not join
                sender.abandon(f"step {plan.step_id} failed on rank 0: {error!r}")
            raise

    def _build(self, plan: StepPlan) -> StepInputs:
        static = self._device.needs_static_shapes
        device = self._device.torch_device
        if plan.prefill:
            if not isinstance(plan.shape, PrefillShape):
                raise ValueError(f"a prefill plan needs a PrefillShape, got {plan.shape}")
            return build_prefill(
                plan.prefill, plan.shape, self._layout, static=static, device=device
            )
        if not isinstance(plan.shape, DecodeShape):
            raise ValueError(f"a decode plan needs a DecodeShape, got {plan.shape}")
        if is_speculative(plan):  # --speculate: verify the drafts
            items, shape = verify_items(plan.decode), verify_shape(plan.decode)
            return build_prefill(items, shape, self._layout, static=static, device=device)
        return build_decode(plan.decode, plan.shape, self._layout, static=static, device=device)

    def _run(self, plan: StepPlan, inputs: StepInputs) -> ForwardResult:
        recomputed = isinstance(self._model, RecomputingCausalLM)
        if isinstance(self._model, RecomputingCausalLM):
            self._model.begin_step(plan, inputs.token_offsets)
        if self._lora is not None:
            num_rows = inputs.input_ids.shape[0]
            self._lora.begin_step(plan, inputs.token_offsets, num_rows, self._device.torch_device)
        self._model.ensure_positions(inputs.max_seq_len)
        args: tuple[Any, ...] = (inputs.input_ids, inputs.positions, inputs.attn)
        # a recomputed model takes its images itself (begin_step)
        if not recomputed and any(item.images for item in plan.prefill):
            args += (self._prompt_embeds(plan.prefill, inputs),)
        with self._device.matmul_context(inputs.input_ids.shape[0]):
            hidden = self._step(args, is_prefill=plan.is_prefill)
        # a speculative step samples every row (packed: no padding), others the last ones
        rows = hidden if is_speculative(plan) else hidden.index_select(0, inputs.logits_index)
        with self._device.matmul_context(rows.shape[0]):
            logits = self._model.compute_logits(rows)
        prompt_logits = self._prompt_logits(plan, hidden, inputs)
        self._device.mark_step()
        return ForwardResult(logits, hidden, inputs, prompt_logits)

    def _prompt_embeds(self, items: Sequence[PrefillItem], inputs: StepInputs) -> Tensor:
        # The vision side runs on rank 0 alone: every rank embeds the step's tokens, rank 0
        # writes the image features in, the others receive its rows (the plan has images).
        receives = self._group is not None and self._group.rank > 0
        if not isinstance(self._model, LlamaForCausalLM) or not (
            receives or self._prompt_embedder is not None
        ):
            raise ValueError("this model does not take images")
        embeds: Tensor = self._model.model.embed_tokens(inputs.input_ids)
        if self._prompt_embedder is not None and not receives:
            self._prompt_embedder(items, inputs.token_offsets, embeds)
        if self._group is not None:
            self._group.broadcast(embeds)
        return embeds

    def _prompt_logits(self, plan: StepPlan, hidden: Tensor, inputs: StepInputs) -> Tensor | None:
        """The logits of every new token of the prefill items asking for prompt logprobs, in
        plan order (None: no item asks): one head call, which every rank makes."""
        if not any(item.prompt_logprobs for item in plan.prefill):
            return None
        items = zip(inputs.token_offsets, plan.prefill, strict=True)
        rows = [
            hidden[o : o + len(i.token_ids) - i.num_cached_tokens]
            for o, i in items
            if i.prompt_logprobs
        ]
        logits: Tensor = self._model.compute_logits(torch.cat(rows))
        return logits
