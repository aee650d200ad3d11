"""Decode steps/s and prefill tokens/s of TorchModelRunner, beside transformers, by batch bucket.

Runs the embedded SmolLM2-135M-Instruct GGUF (or ``--model``) in bf16 on the CPU by default;
both sides load the same weights and run the same shapes in the same process:

- decode: ``batch`` sequences whose KV already holds ``--context`` tokens, one new token
  each per step (ours: ``execute`` with greedy sampling; transformers: ``model(...)`` on a
  ``DynamicCache``, then argmax);
- prefill: ``batch`` prompts of ``--prompt-len`` tokens (ours: ``execute``; transformers:
  one forward without cache).

Usage::

    python packages/tgi-hpu-kernels/benchmarks/bench_runner.py --threads 1 --batches 1,8,32
"""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
)
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.loader import EMBEDDED_MODEL_FILE, embedded_model_path
from tgi_hpu_kernels.runner import TorchModelRunner

BLOCK_SIZE = 128


@dataclass
class Row:
    phase: str
    batch: int
    shape: str
    ours: float
    theirs: float | None
    unit: str


def _timed(fn: Callable[[int], None], steps: int, warmup: int = 2) -> float:
    """Seconds per call of ``fn(step)``, after ``warmup`` untimed calls."""
    for step in range(warmup):
        fn(step)
    start = time.perf_counter()
    for step in range(warmup, warmup + steps):
        fn(step)
    return (time.perf_counter() - start) / steps


def _ours_decode(runner: TorchModelRunner, batch: int, context: int, steps: int) -> float:
    per_seq = -(-(context + steps + 4) // BLOCK_SIZE)
    tables = [tuple(range(i * per_seq, (i + 1) * per_seq)) for i in range(batch)]
    prefill = tuple(
        PrefillItem(
            seq_id=i,
            token_ids=(1,) * context,
            num_prompt_tokens=context,
            num_cached_tokens=0,
            block_table=tables[i],
            sampling=SamplingParams(),
        )
        for i in range(batch)
    )
    runner.execute(StepPlan(step_id=0, shape=PrefillShape(batch, context), prefill=prefill))
    shape = DecodeShape(batch, per_seq)

    def step(k: int) -> None:
        decode = tuple(
            DecodeItem(seq_id=i, token_id=5, position=context + k, block_table=tables[i])
            for i in range(batch)
        )
        runner.execute(StepPlan(step_id=k + 1, shape=shape, decode=decode))

    seconds = _timed(step, steps)
    runner.execute(StepPlan(step_id=-1, shape=None, released=tuple(range(batch))))
    return 1.0 / seconds


def _ours_prefill(runner: TorchModelRunner, batch: int, length: int, steps: int) -> float:
    per_seq = -(-(length + 1) // BLOCK_SIZE)

    def step(k: int) -> None:
        prefill = tuple(
            PrefillItem(
                seq_id=1000 + i,
                token_ids=(1,) * length,
                num_prompt_tokens=length,
                num_cached_tokens=0,
                block_table=tuple(range(i * per_seq, (i + 1) * per_seq)),
                sampling=SamplingParams(),
            )
            for i in range(batch)
        )
        released = tuple(range(1000, 1000 + batch))
        runner.execute(StepPlan(step_id=k, shape=PrefillShape(batch, length), prefill=prefill))
        runner.execute(StepPlan(step_id=k, shape=None, released=released))

    return batch * length / _timed(step, steps, warmup=1)


def _theirs_decode(model: torch.nn.Module, batch: int, context: int, steps: int) -> float:
    from transformers import DynamicCache

    cache = DynamicCache()
    # transformers 5 renamed ``past_key_values`` to ``cache``.
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        model(torch.ones(batch, context, dtype=torch.long), use_cache=True, **{key: cache})

        def step(k: int) -> None:
            out = model(torch.full((batch, 1), 5), use_cache=True, **{key: cache})
            out.logits[:, -1].float().argmax(-1)

        return 1.0 / _timed(step, steps)


def _theirs_prefill(model: torch.nn.Module, batch: int, length: int, steps: int) -> float:
    with torch.inference_mode():

        def step(k: int) -> None:
            model(torch.ones(batch, length, dtype=torch.long), use_cache=False)

        return batch * length / _timed(step, steps, warmup=1)


def _load_transformers(model_id: str, dtype: torch.dtype) -> torch.nn.Module | None:
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    if model_id:
        return AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype).eval()
    folder = str(embedded_model_path().parent)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=EMBEDDED_MODEL_FILE)
    return model.to(dtype).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="", help="model id or path (default: embedded SmolLM2)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--batches", default="1,8,16,32", help="decode batch buckets")
    parser.add_argument("--prefill-batches", default="1,4", help="prefill batch buckets")
    parser.add_argument("--context", type=int, default=256, help="KV tokens per decoding sequence")
    parser.add_argument("--prompt-len", type=int, default=256, help="prefill length")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-transformers", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    prefill_batches = [int(b) for b in args.prefill_batches.split(",")]
    max_total = max(args.context + args.steps + 8, args.prompt_len + 8)
    settings = RunnerSettings(
        model_id=args.model,
        dtype=args.dtype,
        device=args.device,
        block_size=BLOCK_SIZE,
        max_batch_size=max(batches),
        max_total_tokens=max_total,
        num_threads=args.threads,
    )
    blocks = max(*batches, *prefill_batches) * -(-max_total // BLOCK_SIZE)
    runner = TorchModelRunner(settings, num_kv_blocks=blocks)
    theirs = None if args.no_transformers else _load_transformers(args.model, runner.dtype)

    rows = []
    for batch in batches:
        ours = _ours_decode(runner, batch, args.context, args.steps)
        ref = _theirs_decode(theirs, batch, args.context, args.steps) if theirs else None
        rows.append(Row("decode", batch, f"ctx {args.context}", ours, ref, "steps/s"))
    for batch in prefill_batches:
        steps = max(2, args.steps // 5)
        ours = _ours_prefill(runner, batch, args.prompt_len, steps)
        ref = _theirs_prefill(theirs, batch, args.prompt_len, steps) if theirs else None
        rows.append(Row("prefill", batch, f"len {args.prompt_len}", ours, ref, "tokens/s"))

    print(
        f"\n{runner.device.describe()}, {args.dtype}, {runner.config.model_type} "
        f"({runner.config.num_hidden_layers} layers, hidden {runner.config.hidden_size})"
    )
    print("| phase | batch | shape | ours | transformers | ours / transformers | unit |")
    print("|---|---:|---|---:|---:|---:|---|")
    for r in rows:
        ref = f"{r.theirs:.1f}" if r.theirs else "-"
        ratio = f"{r.ours / r.theirs:.2f}x" if r.theirs else "-"
        print(f"| {r.phase} | {r.batch} | {r.shape} | {r.ours:.1f} | {ref} | {ratio} | {r.unit} |")
        if r.phase == "decode":
            print(f"|  |  |  | {r.ours * r.batch:.0f} |  |  | tokens/s |")


if __name__ == "__main__":
    main()
