from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from tgi_core.contract import (
    DecodeShape,
    GenerationRequest,
    ModelRunner,
    Shape,
    StepPlan,
    TokenEvent,
)
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler import BlockAllocator, Engine, Scheduler, all_shapes
from tgi_scheduler.testing import FakeRunner, run_until_idle

README = Path(__file__).resolve().parents[1] / "README.md"
SETTINGS = SchedulerSettings(max_input_tokens=32, max_total_tokens=64, block_size=4)


def test_fake_runner_is_a_model_runner() -> None:
    assert isinstance(FakeRunner(), ModelRunner)


def test_warmup_runs_exactly_all_shapes_and_reports_progress() -> None:
    runner = FakeRunner(64, 4)
    engine = Engine.create(SETTINGS, runner, eos_token_ids=[2])
    seen: list[tuple[int, int, Shape]] = []
    report = engine.warmup(lambda done, total, shape: seen.append((done, total, shape)))
    shapes = all_shapes(SETTINGS)
    assert runner.warmed_shapes == frozenset(shapes)
    assert [s for _, _, s in seen] == list(shapes)
    assert seen[-1][:2] == (len(shapes), len(shapes))
    assert report.num_shapes == len(shapes) and report.num_kv_blocks == 64


def test_warmup_adopts_the_kv_capacity_the_runner_settled_on() -> None:
    runner = FakeRunner(100, 4)
    scheduler = Scheduler(SETTINGS, BlockAllocator(40, 4), eos_token_ids=[2])
    engine = Engine(scheduler, runner)
    engine.warmup()
    assert scheduler.allocator.num_blocks == 100
    assert engine.stats().kv_blocks_total == 99


def test_warmup_refuses_a_cache_too_small_for_max_total_tokens() -> None:
    engine = Engine(Scheduler(SETTINGS, BlockAllocator(40, 4), eos_token_ids=[2]), FakeRunner(8, 4))
    with pytest.raises(ValueError, match="Not enough memory to handle `max_total_tokens=64`"):
        engine.warmup()


def test_block_sizes_must_agree() -> None:
    scheduler = Scheduler(SETTINGS, BlockAllocator(40, 4), eos_token_ids=[2])
    with pytest.raises(ValueError, match="hold 16 tokens"):
        Engine(scheduler, FakeRunner(64, 16))


class OffBucketScheduler(Scheduler):
    """Emits decode shapes one row wider than its buckets: what warmup never saw."""

    def schedule(self) -> StepPlan | None:
        plan = super().schedule()
        if plan is not None and isinstance(plan.shape, DecodeShape):
            wider = DecodeShape(plan.shape.batch_size + 1, plan.shape.num_blocks)
            return msgspec.structs.replace(plan, shape=wider)
        return plan


def test_shapes_outside_warmup_are_counted() -> None:
    runner = FakeRunner(64, 4, strict=False)
    engine = Engine(OffBucketScheduler(SETTINGS, BlockAllocator(64, 4), eos_token_ids=[2]), runner)
    engine.warmup()
    engine.add_request(GenerationRequest(1, (5, 6, 7), max_new_tokens=3))
    run_until_idle(engine)
    assert engine.stats().num_unwarmed_shapes == 2
    assert runner.num_unwarmed_shapes == 2


def test_an_idle_engine_steps_to_nothing() -> None:
    engine = Engine.create(SETTINGS, FakeRunner(64, 4), eos_token_ids=[2])
    assert not engine.has_unfinished()
    assert engine.step() == []
    engine.abort(12345)  # unknown ids are ignored


def test_stats_cross_process_boundaries() -> None:
    engine = Engine.create(SETTINGS, FakeRunner(64, 4), eos_token_ids=[2])
    engine.add_request(GenerationRequest(1, (5, 6, 7), max_new_tokens=3))
    engine.step()
    stats = msgspec.to_builtins(engine.stats())
    assert stats["batch_size"] == 1 and stats["num_prefill_steps"] == 1
    assert stats["batch_current_max_tokens"] == 6  # 3 prompt tokens + 3 new ones


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- embedding-example -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match is not None, "README lost its embedding example"
    return match.group(1)


def test_readme_embedding_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) < 40
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out.split()
    assert printed == ["[42,", "43,", "44,", "45]", "length"]


def test_events_of_a_run_are_tokens_then_one_final() -> None:
    engine = Engine.create(SETTINGS, FakeRunner(64, 4), eos_token_ids=[2])
    engine.add_request(GenerationRequest(7, (5, 6, 7), max_new_tokens=2))
    (events,) = run_until_idle(engine).values()
    assert [e.token_id for e in events if isinstance(e, TokenEvent)] == [8, 9]
