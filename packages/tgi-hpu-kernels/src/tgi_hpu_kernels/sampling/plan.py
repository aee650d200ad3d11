"""Per-sequence sampling state and the per-batch plan built from it.

A ``BatchPlan`` holds everything about a batch composition that does not change from step
to step: which rows need penalties, a watermark, warpers or a draw, and their parameters as
small device tensors. The sampler builds it once per composition (the only Python loop over
the sequences) and reuses it while the same sequences decode together.

What does not live here: the tensor work of a step (``sampler.py`` and the modules it calls).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tgi_core.contract import SamplingParams
from tgi_hpu_kernels.sampling.rng import seed_words

__all__ = ["BatchPlan", "PenaltyPlan", "Rows", "SamplePlan", "SequenceState", "build_plan"]


@dataclass(slots=True)
class SequenceState:
    """What the sampler keeps for one sequence between steps."""

    params: SamplingParams
    last_token_id: int  # seeds the watermark's greenlist; kept current for watermarked rows
    step_slot: int | None  # sampling sequences: row of the generated-token counters
    count_slot: int | None  # penalised sequences: row of the token counts

    @property
    def is_penalised(self) -> bool:
        return self.params.repetition_penalty != 1.0 or self.params.frequency_penalty != 0.0


@dataclass(frozen=True, slots=True)
class Rows:
    """A subset of a batch's rows: host positions and their device index.

    ``index`` is None when the subset is the whole batch, in order (no gather needed).
    """

    positions: tuple[int, ...]
    index: torch.Tensor | None

    @classmethod
    def of(cls, positions: Sequence[int], num_rows: int, device: torch.device) -> Rows:
        positions = tuple(positions)
        if positions == tuple(range(num_rows)):
            return cls(positions, None)
        return cls(positions, torch.tensor(positions, dtype=torch.int64, device=device))

    def __bool__(self) -> bool:
        return bool(self.positions)

    def select(self, tensor: torch.Tensor) -> torch.Tensor:
        """The rows of ``tensor`` (the tensor itself when the subset is everything)."""
        return tensor if self.index is None else tensor.index_select(0, self.index)

    def put(self, tensor: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``values`` (from ``select``) back into ``tensor``'s rows."""
        if self.index is not None:
            tensor.index_copy_(0, self.index, values)
        elif values is not tensor:
            tensor.copy_(values)


@dataclass(frozen=True, slots=True)
class PenaltyPlan:
    rows: Rows
    count_slots: torch.Tensor  # [p] int64
    repetition: torch.Tensor | None  # [p, 1] float32, None when no row has one
    frequency: torch.Tensor | None  # [p, 1] float32, None when no row has one


@dataclass(frozen=True, slots=True)
class SamplePlan:
    """The sampling rows; warper parameters are indexed within these rows."""

    rows: Rows
    step_slots: torch.Tensor  # [s] int64
    seed_lo: torch.Tensor  # [s] int32
    seed_hi: torch.Tensor  # [s] int32
    temperature: torch.Tensor | None  # [s, 1] float32, None when every row has 1.0
    top_k_rows: Rows
    top_k: torch.Tensor | None  # [k, 1] int64
    max_top_k: int
    top_p_rows: Rows
    one_minus_top_p: torch.Tensor | None  # [t, 1] float32
    typical_rows: Rows
    typical_p: torch.Tensor | None  # [y, 1] float32


@dataclass(frozen=True, slots=True)
class BatchPlan:
    states: tuple[SequenceState, ...]
    greedy: Rows
    penalties: PenaltyPlan | None
    watermark: Rows
    sample: SamplePlan | None
    top_n: Rows  # rows that asked for top tokens
    max_top_n: int

    @property
    def num_rows(self) -> int:
        return len(self.states)

    @property
    def changes_scores(self) -> bool:
        """Whether any row's scores differ from the raw logits."""
        return self.penalties is not None or bool(self.watermark) or self.sample is not None


def build_plan(states: Sequence[SequenceState], device: torch.device) -> BatchPlan:
    """The plan of a batch whose rows are ``states``, in order."""
    num_rows = len(states)
    params = [state.params for state in states]
    top_n_positions = [i for i, p in enumerate(params) if p.top_n_tokens > 0]
    return BatchPlan(
        states=tuple(states),
        greedy=Rows.of([i for i, p in enumerate(params) if not p.do_sample], num_rows, device),
        penalties=_penalty_plan(states, device),
        watermark=Rows.of([i for i, p in enumerate(params) if p.watermark], num_rows, device),
        sample=_sample_plan(states, device),
        top_n=Rows.of(top_n_positions, num_rows, device),
        max_top_n=max((p.top_n_tokens for p in params), default=0),
    )


def _penalty_plan(states: Sequence[SequenceState], device: torch.device) -> PenaltyPlan | None:
    positions = [i for i, state in enumerate(states) if state.is_penalised]
    if not positions:
        return None
    penalised = [states[i] for i in positions]
    return PenaltyPlan(
        rows=Rows.of(positions, len(states), device),
        count_slots=_slots([state.count_slot for state in penalised], device),
        repetition=_column(penalised, lambda p: p.repetition_penalty, 1.0, device),
        frequency=_column(penalised, lambda p: p.frequency_penalty, 0.0, device),
    )


def _sample_plan(states: Sequence[SequenceState], device: torch.device) -> SamplePlan | None:
    positions = [i for i, state in enumerate(states) if state.params.do_sample]
    if not positions:
        return None
    sampled = [states[i] for i in positions]
    params = [state.params for state in sampled]
    words = [seed_words(p.seed) for p in params]
    top_k_positions = [i for i, p in enumerate(params) if p.top_k > 0]
    top_p_positions = [i for i, p in enumerate(params) if p.top_p < 1.0]
    typical_positions = [i for i, p in enumerate(params) if p.typical_p < 1.0]
    return SamplePlan(
        rows=Rows.of(positions, len(states), device),
        step_slots=_slots([state.step_slot for state in sampled], device),
        seed_lo=torch.tensor([w[0] for w in words], dtype=torch.int32, device=device),
        seed_hi=torch.tensor([w[1] for w in words], dtype=torch.int32, device=device),
        temperature=_column(sampled, lambda p: p.temperature, 1.0, device),
        top_k_rows=Rows.of(top_k_positions, len(params), device),
        top_k=(
            torch.tensor([[params[i].top_k] for i in top_k_positions], device=device)
            if top_k_positions
            else None
        ),
        max_top_k=max(p.top_k for p in params),
        top_p_rows=Rows.of(top_p_positions, len(params), device),
        # 1 - top_p in float64 then float32: the threshold HF's TopPLogitsWarper compares to.
        one_minus_top_p=_tensor([[1.0 - params[i].top_p] for i in top_p_positions], device),
        typical_rows=Rows.of(typical_positions, len(params), device),
        typical_p=_tensor([[params[i].typical_p] for i in typical_positions], device),
    )


def _column(
    states: Sequence[SequenceState],
    field: Callable[[SamplingParams], float],
    neutral: float,
    device: torch.device,
) -> torch.Tensor | None:
    """``[n, 1]`` float32 of one parameter, or None when every row has the neutral value."""
    values = [field(state.params) for state in states]
    if all(value == neutral for value in values):
        return None
    return torch.tensor([[value] for value in values], dtype=torch.float32, device=device)


def _slots(slots: list[int | None], device: torch.device) -> torch.Tensor:
    if any(slot is None for slot in slots):
        raise RuntimeError("a sequence is missing its device state")
    return torch.tensor(slots, dtype=torch.int64, device=device)


def _tensor(rows: list[list[float]], device: torch.device) -> torch.Tensor | None:
    return torch.tensor(rows, dtype=torch.float32, device=device) if rows else None
