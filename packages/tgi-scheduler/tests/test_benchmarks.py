"""The benchmark and simulation scripts still run (tiny sizes; the figures are in the README)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "args", "rows"),
    [
        (
            "bench_step.py",
            ["--steps", "20"],
            ["decode-256", "queue-2000/priority", "queue-2000/fifo"],
        ),
        ("simulate_queue.py", ["--requests", "60"], ["| 3 | priority", "| 6 | fifo"]),
    ],
)
def test_script_prints_its_table(script: str, args: list[str], rows: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert result.stdout.startswith("| ")
    for row in rows:
        assert row in result.stdout
