"""The fake runner itself: its tokens, and that it catches the plans a device would choke on."""

from __future__ import annotations

import pytest

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
)
from tgi_scheduler.testing import CostModel, FakeRunner, PlanInvariantError


def prefill(
    request_id: int,
    token_ids: tuple[int, ...],
    table: tuple[int, ...],
    cached: int = 0,
    **kw: bool | SamplingParams,
) -> PrefillItem:
    return PrefillItem(request_id, token_ids, len(token_ids), cached, table, SamplingParams(), **kw)  # type: ignore[arg-type]


def plan(
    step_id: int, *items: PrefillItem | DecodeItem, released: tuple[int, ...] = ()
) -> StepPlan:
    prefills = tuple(i for i in items if isinstance(i, PrefillItem))
    decodes = tuple(i for i in items if isinstance(i, DecodeItem))
    width = 8 if any(i.num_cached_tokens for i in prefills) else 0
    shape = PrefillShape(8, 64, width) if prefills else DecodeShape(8, 8) if decodes else None
    return StepPlan(step_id, shape, prefills, decodes, released)


def test_tokens_are_deterministic_with_scripted_eos() -> None:
    runner = FakeRunner(16, 4, eos_after={1: 2}, eos_token_id=9)
    sampling = SamplingParams(top_n_tokens=2)
    first = PrefillItem(1, (5, 6, 7), 3, 0, (1,), sampling, prompt_logprobs=True)
    (out,) = runner.execute(plan(1, first)).outputs
    assert out.token_id == 8 and out.prompt_logprobs == (None, -1.0, -1.0)
    assert [t.token_id for t in out.top_tokens] == [8, 9]
    (out,) = runner.execute(plan(2, DecodeItem(1, 8, 3, (1,)))).outputs
    assert out.token_id == 9  # the scripted EOS as the second generated token
    assert len(out.top_tokens) == 2 and out.prompt_logprobs is None


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([plan(1, DecodeItem(1, 5, 0, (1,)))], "decoded before its prefill"),
        ([plan(1, prefill(1, (5,), (1,))), plan(2, prefill(1, (5,), (1,)))], "prefilled again"),
        ([plan(1, released=(4,))], "does not hold"),
        ([plan(1, prefill(1, (5, 6), (1,))), plan(2, DecodeItem(1, 6, 2, (1,)))], "decode of 6@2"),
        (
            [plan(1, prefill(1, (5, 6), (1,))), plan(2, DecodeItem(1, 7, 2, (2,)))],
            "does not extend",
        ),
        ([plan(1, prefill(1, (5, 6, 7, 8), (1,)))], "1 blocks for 5 slots"),
        ([plan(1, prefill(1, (5,), (1, 1)))], "bad block table"),
        (
            [plan(1, prefill(1, (5, 6), (1,))), plan(2, prefill(2, (7, 8), (1,)))],
            "writes block 1, which is shared",
        ),
        (
            [
                plan(1, prefill(1, (5, 6, 7, 8, 9), (1, 2))),
                plan(2, prefill(2, (1, 2, 3, 4, 9), (1, 3), cached=4)),
            ],
            "reads stale KV at position 0",
        ),
        ([StepPlan(1, PrefillShape(1, 1), (prefill(1, (5, 6), (1,)),))], "does not cover"),
        ([StepPlan(1, None, (prefill(1, (5,), (1,)),))], "shape None for 1 items"),
        (
            [
                plan(1, prefill(1, (5,), (1,))),
                StepPlan(
                    2, DecodeShape(8, 8), (prefill(2, (7,), (2,)),), (DecodeItem(1, 6, 1, (1,)),)
                ),
            ],
            "mixes prefill and decode",
        ),
    ],
)
def test_violations_are_caught(steps: list[StepPlan], message: str) -> None:
    lenient = FakeRunner(16, 4, strict=False)
    for step in steps:
        lenient.execute(step)
    assert any(message in v for v in lenient.violations), lenient.violations
    strict = FakeRunner(16, 4)
    with pytest.raises(PlanInvariantError, match=message):
        for step in steps:
            strict.execute(step)


def test_a_cached_prefix_with_the_right_tokens_is_fine() -> None:
    runner = FakeRunner(16, 4)
    runner.execute(plan(1, prefill(1, (1, 2, 3, 4, 9), (1, 2))))
    runner.execute(plan(2, prefill(2, (1, 2, 3, 4, 7), (1, 3), cached=4)))
    assert runner.violations == []
    assert runner.live_request_ids == frozenset({1, 2})


def test_unwarmed_shapes_are_counted() -> None:
    runner = FakeRunner(16, 4, strict=False)
    runner.warmup([PrefillShape(8, 64, 0)])
    runner.execute(plan(1, prefill(1, (5,), (1,))))
    runner.execute(plan(2, DecodeItem(1, 6, 1, (1,))))
    assert runner.num_unwarmed_shapes == 1


def test_scripted_failures_raise_after_the_releases() -> None:
    runner = FakeRunner(16, 4, fail_step_ids={2})
    runner.execute(plan(1, prefill(1, (5,), (1,))))
    with pytest.raises(RuntimeError, match="scripted failure at step 2"):
        runner.execute(plan(2, prefill(2, (6,), (2,)), released=(1,)))
    assert runner.live_request_ids == frozenset()
    runner.execute(plan(3, released=(2,)))  # the failed prefill's release is expected
    assert runner.violations == []


def test_cost_model_drives_a_virtual_clock() -> None:
    cost = CostModel(step_seconds=0.01, prefill_token_seconds=0.001, decode_row_seconds=0.002)
    runner = FakeRunner(16, 4, cost_model=cost)
    runner.execute(plan(1, prefill(1, (5,), (1,))))  # 8 x 64 padded tokens
    assert runner.clock() == pytest.approx(0.01 + 8 * 64 * 0.001)
    runner.execute(plan(2, DecodeItem(1, 6, 1, (1,))))  # 8 padded rows
    assert runner.clock() == pytest.approx(0.01 + 0.512 + 0.01 + 8 * 0.002)
