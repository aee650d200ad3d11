"""examples/async_driver.py runs: concurrent consumers stream their tokens, a consumer that
leaves early has its request aborted, and the engine ends idle."""

from __future__ import annotations

import asyncio
import collections
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tgi_core.contract import StepOutput, StepPlan

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "async_driver.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("async_driver", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_async_driver_streams_to_concurrent_consumers(capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example()
    made: collections.Counter[int] = collections.Counter()  # tokens computed per request

    class CountingRecorder(example.CountingRunner):  # type: ignore[name-defined,misc]
        def execute(self, plan: StepPlan) -> StepOutput:
            output: StepOutput = super().execute(plan)
            made.update(out.request_id for out in output.outputs)
            return output

    results = asyncio.run(example.main(CountingRecorder()))

    assert results == {
        "a": list(range(11, 19)),
        "b": list(range(102, 110)),
        "c": list(range(503, 511)),
        "early": [901, 902, 903],
    }
    lines = capsys.readouterr().out.splitlines()
    # Streamed, not collected: every consumer printed its first token before any printed its
    # last (one batch, one token per consumer per step).
    first_last = [lines.index("a: 11"), lines.index("b: 102"), lines.index("c: 503")]
    assert max(first_last) < min(lines.index(t) for t in ("a: 18", "b: 109", "c: 510"))
    assert lines[-1] == "kv blocks in use at the end: 0"
    # The early leaver's request was aborted: the model stopped making its tokens well
    # before its max_new_tokens (8); the others ran to the end.
    assert made[0] == made[1] == made[2] == 8
    assert 3 <= made[3] < 8, made
