"""``SequenceSampling``: the runner's per-sequence sampling state and one step's choice.

It owns the ``Sampler`` (penalties, warpers, seeded draws) and, from the first constrained
sequence on, the ``GrammarConstraints``; it registers prefills with both, releases what a plan
releases, and turns a step's logits into tokens: grammar masks written on the host before the
forward pass (``prepare``), applied to the logits, sampled, and the guides advanced over the
chosen tokens (``sample``). Both parts are built lazily: the grammar one pulls in
``outlines_core`` and needs the tokenizer's token bytes.

Before a constrained request's prefill, the engine asks ``prepare_request`` until its
grammar's index, compiled on a background thread, is ready (``RequestPreparer``); a prefill
whose index was never asked for compiles it on the spot.

A failure that belongs to one sequence (its parameters or grammar refused at its prefill,
a token that breaks its grammar) drops that sequence's state and is reported in
``PreparedStep.failed``; the other rows of the step go on.

What does not live here: the forward pass, step tensors and prompt logprobs (``runner.py``),
the sampling maths (``sampling/``) and the regex guides themselves (``sampling/grammar.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tgi_core.contract import (
    PREPARED,
    DecodeItem,
    GenerationRequest,
    PrefillItem,
    Preparation,
    SamplingParams,
    StepPlan,
)

if TYPE_CHECKING:
    from tgi_hpu_kernels.sampling import Sampler, SampleResult
    from tgi_hpu_kernels.sampling.grammar import GrammarConstraints, GrammarMask

__all__ = ["PreparedStep", "SequenceSampling"]


@dataclass(frozen=True, slots=True)
class PreparedStep:
    """One step's rows in plan order, and the grammar masks of its constrained rows."""

    request_ids: list[int]
    grammar: GrammarConstraints | None  # None when no live sequence is constrained
    mask: GrammarMask | None  # None when no row of this step is constrained
    failed: dict[int, str] = field(default_factory=dict)  # sequences failed alone, and why


class SequenceSampling:
    """The sampler and grammar guides of the runner's live sequences.

    Args:
        vocab_size: the width of the model's logits.
        device: where the sampler's tensors and the masks live.
        watermark_gamma, watermark_delta: the sampler's watermark (``RunnerSettings``).
        token_bytes: each non-special token id's raw bytes; without it a sequence with a
            ``grammar`` fails its step.
        eos_token_ids: every id that ends generation; a grammar allows them all where its
            text is complete.
    """

    def __init__(
        self,
        vocab_size: int,
        device: torch.device,
        *,
        watermark_gamma: float,
        watermark_delta: float,
        token_bytes: Mapping[int, bytes] | None,
        eos_token_ids: tuple[int, ...],
    ) -> None:
        self._vocab_size = vocab_size
        self._device = device
        self._watermark = (watermark_gamma, watermark_delta)
        self._token_bytes = token_bytes
        self._eos_token_ids = eos_token_ids
        self._sampler: Sampler | None = None
        self._grammar: GrammarConstraints | None = None  # built at the first grammar

    @property
    def sampler(self) -> Sampler:
        """The sampler, built at first use."""
        if self._sampler is None:
            from tgi_hpu_kernels.sampling import Sampler

            gamma, delta = self._watermark
            self._sampler = Sampler(
                self._vocab_size, self._device, watermark_gamma=gamma, watermark_delta=delta
            )
        return self._sampler

    @property
    def grammar(self) -> GrammarConstraints | None:
        """The grammar guides, once a constrained sequence arrived (None before)."""
        return self._grammar

    def prepare_request(self, request: GenerationRequest) -> Preparation:
        """Whether ``request``'s grammar index is ready; starts its compile if need be."""
        regex = request.sampling.grammar
        if regex is None:
            return PREPARED
        try:
            grammar = self._grammar_for_step()
        except ValueError as exc:  # no vocabulary to constrain: that request fails
            return Preparation(ready=False, error=str(exc))
        return grammar.compiler.status(regex)

    def wait_prepared(self, timeout_s: float) -> None:
        """Block until a grammar compile under way ends, or ``timeout_s``."""
        if self._grammar is not None:
            self._grammar.compiler.wait(timeout_s)

    def close(self) -> None:
        """Stop the grammar compile thread, if one started."""
        if self._grammar is not None:
            self._grammar.compiler.close()

    def release(self, request_ids: Sequence[int]) -> None:
        """Drop the sampler state and grammar guide of each id; unknown ids are ignored."""
        sampler = self.sampler
        for request_id in request_ids:
            sampler.release(request_id)
            if self._grammar is not None:
                self._grammar.release(request_id)

    def add_prefill(self, item: PrefillItem) -> None:
        """Register a prefill (again after a preemption), replacing any state it had."""
        self.sampler.add_sequence(
            item.request_id, item.sampling, item.token_ids, item.num_prompt_tokens
        )
        if item.sampling.grammar is not None:
            generated_ids = item.token_ids[item.num_prompt_tokens :]  # a recompute's tokens
            self._grammar_for_step().add_sequence(
                item.request_id, item.sampling.grammar, generated_ids
            )
        elif self._grammar is not None:
            self._grammar.release(item.request_id)

    def add_dummy_decodes(self, items: Sequence[DecodeItem]) -> None:
        """Warmup: give dummy decodes the greedy state a prefill would have made."""
        sampler = self.sampler
        for item in items:
            sampler.add_sequence(item.request_id, SamplingParams(), (item.token_id,), 1)

    def prepare(self, plan: StepPlan) -> PreparedStep:
        """Register the plan's prefills and write its grammar masks, before the forward pass
        so that the host work overlaps the device."""
        failed: dict[int, str] = {}
        for item in plan.prefill:
            try:
                self.add_prefill(item)
            except ValueError as exc:  # its own parameters or grammar (GrammarError)
                failed[item.request_id] = str(exc)
                self.release([item.request_id])
        if self._grammar is not None:
            self._grammar.compiler.end_step()  # the prepared prefills have their guides
        request_ids = [item.request_id for item in plan.prefill] or [
            item.request_id for item in plan.decode
        ]
        return self.prepare_rows(request_ids, failed)

    def prepare_rows(
        self, request_ids: list[int], failed: dict[int, str] | None = None
    ) -> PreparedStep:
        """The grammar masks of ``request_ids``' rows at their guides' current states (a
        speculative step asks again for each position it verifies)."""
        grammar = self._grammar if self._grammar and self._grammar.num_sequences else None
        mask = grammar.prepare(request_ids, self._vocab_size) if grammar else None
        return PreparedStep(request_ids, grammar, mask, {} if failed is None else failed)

    def sample(self, step: PreparedStep, logits: Tensor) -> SampleResult:
        """Mask ``logits`` ``[len(step.request_ids), vocab]``, choose one token per row and move
        the grammar guides over them; a failed row (``step.failed``, which this extends)
        gets token 0 and no logprobs."""
        grammar, mask = step.grammar, step.mask
        if grammar is not None and mask is not None:
            grammar.apply_(mask, logits)
        if not step.failed:
            result = self.sampler.sample(step.request_ids, logits)
        else:
            result = self._sample_rows(step, logits)
        if grammar is not None:
            step.failed.update(grammar.advance(step.request_ids, result.token_ids))
        return result

    def _sample_rows(self, step: PreparedStep, logits: Tensor) -> SampleResult:
        """Sample the rows that did not fail; placeholders for the others."""
        rows = [i for i, request_id in enumerate(step.request_ids) if request_id not in step.failed]
        index = torch.tensor(rows, dtype=torch.int64, device=logits.device)
        live = self.sampler.sample(
            [step.request_ids[i] for i in rows], logits.index_select(0, index)
        )
        from tgi_hpu_kernels.sampling import SampleResult

        num_rows = len(step.request_ids)
        result = SampleResult([0] * num_rows, [0.0] * num_rows, [()] * num_rows)
        for j, i in enumerate(rows):
            result.token_ids[i] = live.token_ids[j]
            result.logprobs[i] = live.logprobs[j]
            result.top_tokens[i] = live.top_tokens[j]
        return result

    def _grammar_for_step(self) -> GrammarConstraints:
        if self._grammar is None:
            if self._token_bytes is None:
                raise ValueError(
                    "grammar-constrained generation needs the tokenizer's vocabulary: build "
                    "TorchModelRunner with token_bytes=tgi_core.tokenization.token_bytes(tokenizer)"
                )
            from tgi_hpu_kernels.sampling.grammar import GrammarConstraints

            self._grammar = GrammarConstraints(self._token_bytes, self._eos_token_ids, self._device)
        return self._grammar
