"""Cost of grammar masks: decode step time at one batch size with 0..n constrained sequences.

Runs the embedded SmolLM2-135M-Instruct GGUF on the CPU: ``--batch`` chat prompts asking for
a JSON object are prefilled, then ``--steps`` decode steps are timed (median wall-clock per
step), once per ``--constrained`` count; the constrained sequences follow a JSON schema with
a free-text field (most steps sit inside a string, where nearly the whole vocabulary is
allowed: the most expensive mask to write). The grammar's own host time (``prepare``,
``apply_``, ``advance``) is timed apart. Usage::

    python packages/tgi-hpu-kernels/benchmarks/bench_grammar.py --constrained 0,8,32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from outlines_core.json_schema import build_regex_from_schema

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
)
from tgi_core.settings.slices import RunnerSettings
from tgi_core.testing import smollm2_tokenizer
from tgi_core.tokenization import token_bytes
from tgi_hpu_kernels.runner import TorchModelRunner

BLOCK_SIZE = 16
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "biography": {"type": "string"}},
    "required": ["name", "biography"],
}


def _timed(owner: Any, name: str, totals: dict[str, float]) -> None:
    method: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def _run(
    runner: TorchModelRunner, prompt: list[int], batch: int, constrained: int, steps: int
) -> tuple[float, float]:
    """(median ms per decode step, grammar host ms per step)."""
    regex = build_regex_from_schema(json.dumps(SCHEMA))
    per_seq = 1024 // BLOCK_SIZE
    tables = [tuple(range(i * per_seq, (i + 1) * per_seq)) for i in range(batch)]
    params = [SamplingParams(grammar=regex if i < constrained else None) for i in range(batch)]
    last = []
    for start in range(0, batch, 8):  # prefill in groups of 8 (bounded prefill memory)
        items = tuple(
            PrefillItem(1000 + i, tuple(prompt), len(prompt), 0, tables[i], params[i])
            for i in range(start, min(start + 8, batch))
        )
        plan = StepPlan(0, PrefillShape(len(items), len(prompt)), prefill=items)
        last += [o.token_id for o in runner.execute(plan).outputs]
    grammar = runner._sequences.grammar  # the benchmark times the guides' own host work
    totals: dict[str, float] = {}
    if grammar is not None:
        for name in ("prepare", "apply_", "advance"):
            vars(grammar).pop(name, None)  # the previous run's timer
            _timed(grammar, name, totals)
    times = []
    for step in range(steps + 1):
        position = len(prompt) + step
        decode = tuple(
            DecodeItem(1000 + i, last[i], position, tables[i]) for i in range(batch)
        )  # EOS or not, every sequence runs all steps (a finished guide allows only EOS)
        start = time.perf_counter()
        out = runner.execute(StepPlan(step + 1, DecodeShape(batch, per_seq), decode=decode))
        if step:  # the first step is a warm-up
            times.append(time.perf_counter() - start)
        last = [o.token_id for o in out.outputs]
    runner.execute(StepPlan(steps + 2, None, released=tuple(1000 + i for i in range(batch))))
    grammar_ms = sum(totals.values()) * 1e3 / (steps + 1)
    return statistics.median(times) * 1e3, grammar_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--constrained", default="0,8,32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    tokenizer = smollm2_tokenizer()
    settings = RunnerSettings(
        dtype=args.dtype, device="cpu", block_size=BLOCK_SIZE, max_total_tokens=1024
    )
    runner = TorchModelRunner(
        settings,
        num_kv_blocks=args.batch * 1024 // BLOCK_SIZE,
        token_bytes=token_bytes(tokenizer),
        eos_token_ids=tokenizer.eos_token_ids,
    )
    question = "Describe a famous scientist as a JSON object with a name and a biography."
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}])
    prompt = tokenizer.encode(text, add_special_tokens=False)
    print(f"load average {os.getloadavg()[0]:.2f}, batch {args.batch}, {args.dtype}")
    for constrained in (int(n) for n in args.constrained.split(",")):
        step_ms, grammar_ms = _run(runner, prompt, args.batch, constrained, args.steps)
        print(
            f"{constrained:3d} constrained: {step_ms:7.1f} ms/step (median), "
            f"grammar host work {grammar_ms:5.2f} ms/step"
        )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
