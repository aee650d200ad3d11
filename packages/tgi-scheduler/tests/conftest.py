from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler import Engine
from tgi_scheduler.testing import FakeRunner

# Small CPU-like limits: 4-token blocks so that a few tokens cross block boundaries.
SMALL = SchedulerSettings(
    max_concurrent_requests=64,
    max_batch_size=8,
    max_batch_prefill_tokens=64,
    max_input_tokens=32,
    max_total_tokens=64,
    batch_bucket_size=4,
    prefill_batch_bucket_size=2,
    pad_sequence_to_multiple_of=8,
    block_size=4,
    max_generation_chunk=16,
)

EngineFactory = Callable[..., tuple[Engine, FakeRunner]]


class Clock:
    """A manual clock for queue times and overdue thresholds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_engine() -> EngineFactory:
    """``make_engine(num_kv_blocks=64, clock=None, warmup=True, runner=..., **settings)``."""

    def build(
        num_kv_blocks: int = 64,
        clock: Callable[[], float] | None = None,
        warmup: bool = True,
        runner: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> tuple[Engine, FakeRunner]:
        settings = replace(SMALL, **overrides)
        fake = FakeRunner(num_kv_blocks, settings.block_size, **(runner or {}))
        engine = Engine.create(
            settings, fake, eos_token_ids=[fake.eos_token_id], clock=clock or time.monotonic
        )
        if warmup:
            engine.warmup()
        return engine, fake

    return build
