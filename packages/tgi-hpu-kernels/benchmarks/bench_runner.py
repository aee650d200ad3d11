"""Decode and prefill speed of TorchModelRunner by batch bucket and thread count, beside
transformers' forward at the same shapes, in one process on the same weights.

Runs the embedded SmolLM2-135M-Instruct GGUF (or ``--model``) in bf16 on the CPU by default:

- decode: ``batch`` sequences whose KV already holds ``--context`` tokens, one new token
  each per step (ours: ``execute`` with greedy sampling; transformers: ``model(...)`` on a
  ``DynamicCache``, then argmax); reported as steps/s and tokens/s;
- prefill: ``batch`` prompts of ``--prompt-lens`` tokens (drawn once, seeded; ours:
  ``execute``, greedy first token included; transformers: one right-padded forward without
  cache, its padding counted as work); reported as prompt tokens/s.

Figures are wall-clock; the load average before and after is printed because the machine's
other work moves them. Usage::

    python packages/tgi-hpu-kernels/benchmarks/bench_runner.py --threads 1,2
"""

from __future__ import annotations

import argparse
import inspect
import os
import random
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
from tgi_hpu_kernels.device import select_device
from tgi_hpu_kernels.loader import EMBEDDED_MODEL_FILE, embedded_model_path
from tgi_hpu_kernels.runner import TorchModelRunner

BLOCK_SIZE = 128


@dataclass
class Row:
    threads: int
    phase: str
    batch: int
    shape: str
    ours: float  # steps/s (decode) or tokens/s (prefill)
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


def _blocks(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)


def _prefill_items(
    lengths: list[int], first_seq: int, per_seq: int, seed: int = 0
) -> tuple[PrefillItem, ...]:
    rng = random.Random(seed)
    return tuple(
        PrefillItem(
            request_id=first_seq + i,
            token_ids=tuple(rng.randrange(1, 40_000) for _ in range(length)),
            num_prompt_tokens=length,
            num_cached_tokens=0,
            block_table=tuple(range(i * per_seq, (i + 1) * per_seq)),
            sampling=SamplingParams(),
        )
        for i, length in enumerate(lengths)
    )


def _ours_decode(runner: TorchModelRunner, batch: int, context: int, steps: int) -> float:
    per_seq = _blocks(context + steps + 4)
    tables = [tuple(range(i * per_seq, (i + 1) * per_seq)) for i in range(batch)]
    prefill = _prefill_items([context] * batch, 0, per_seq)
    runner.execute(StepPlan(step_id=0, shape=PrefillShape(batch, context), prefill=prefill))
    shape = DecodeShape(batch, per_seq)

    def step(k: int) -> None:
        decode = tuple(
            DecodeItem(request_id=i, token_id=5, position=context + k, block_table=tables[i])
            for i in range(batch)
        )
        runner.execute(StepPlan(step_id=k + 1, shape=shape, decode=decode))

    seconds = _timed(step, steps)
    runner.execute(StepPlan(step_id=-1, shape=None, released=tuple(range(batch))))
    return 1.0 / seconds


def _ours_prefill(runner: TorchModelRunner, lengths: list[int], steps: int) -> float:
    per_seq = _blocks(max(lengths) + 1)
    items = _prefill_items(lengths, 1000, per_seq)
    released = tuple(item.request_id for item in items)
    shape = PrefillShape(len(lengths), max(lengths))

    def step(k: int) -> None:
        runner.execute(StepPlan(step_id=k, shape=shape, prefill=items))
        runner.execute(StepPlan(step_id=k, shape=None, released=released))

    return sum(lengths) / _timed(step, steps, warmup=1)


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


def _theirs_prefill(model: torch.nn.Module, lengths: list[int], steps: int) -> float:
    ids = torch.ones(len(lengths), max(lengths), dtype=torch.long)
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    with torch.inference_mode():

        def step(k: int) -> None:
            model(ids, attention_mask=mask, use_cache=False)

        return sum(lengths) / _timed(step, steps, warmup=1)


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


def _prompt_lengths(batch: int, low: int, high: int) -> list[int]:
    rng = random.Random(batch)
    return [rng.randint(low, high) for _ in range(batch)]


def _measure(
    runner: TorchModelRunner,
    theirs: torch.nn.Module | None,
    args: argparse.Namespace,
    threads: int,
) -> list[Row]:
    torch.set_num_threads(threads)
    rows = []
    for batch in _ints(args.batches):
        ours = _ours_decode(runner, batch, args.context, args.steps)
        ref = _theirs_decode(theirs, batch, args.context, args.steps) if theirs else None
        rows.append(Row(threads, "decode", batch, f"ctx {args.context}", ours, ref, "steps/s"))
    low, high = _ints(args.prompt_lens)
    for batch in _ints(args.prefill_batches):
        lengths = _prompt_lengths(batch, low, high)
        steps = max(2, args.steps // 5)
        ours = _ours_prefill(runner, lengths, steps)
        ref = _theirs_prefill(theirs, lengths, steps) if theirs else None
        shape = f"{sum(lengths)} tokens"
        rows.append(Row(threads, "prefill", batch, shape, ours, ref, "tokens/s"))
    return rows


def _ints(text: str) -> list[int]:
    return [int(value) for value in text.split(",")]


def _print(rows: list[Row]) -> None:
    print("| threads | phase | batch | shape | ours | transformers | ours / transformers | unit |")
    print("|---:|---|---:|---|---:|---:|---:|---|")
    for r in rows:
        ref = f"{r.theirs:.1f}" if r.theirs else "-"
        ratio = f"{r.ours / r.theirs:.2f}x" if r.theirs else "-"
        cells = f"{r.threads} | {r.phase} | {r.batch} | {r.shape}"
        print(f"| {cells} | {r.ours:.1f} | {ref} | {ratio} | {r.unit} |")
        if r.phase == "decode":
            theirs_tokens = f"{r.theirs * r.batch:.0f}" if r.theirs else "-"
            cells = f"{r.threads} | decode | {r.batch} |"
            print(f"| {cells} | {r.ours * r.batch:.0f} | {theirs_tokens} | | tokens/s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="", help="model id or path (default: embedded SmolLM2)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default="1", help="torch thread counts to run, e.g. 1,2")
    parser.add_argument("--batches", default="1,8,16,32,64", help="decode batch buckets")
    parser.add_argument("--prefill-batches", default="1,4,8", help="prompts per prefill")
    parser.add_argument("--prompt-lens", default="50,200", help="prompt length range (low,high)")
    parser.add_argument("--context", type=int, default=256, help="KV tokens per decoding sequence")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--quantize", default=None, help="a --quantize method, e.g. bitsandbytes")
    parser.add_argument(
        "--gguf-weights",
        default="auto",
        choices=["auto", "dense", "quantized"],
        help="a quantized GGUF: the device's choice, dequantized, or kept quantized "
        "(the server's --gguf-weights)",
    )
    args = parser.parse_args()
    batches = _ints(args.batches)
    max_prompts = max(_ints(args.prefill_batches))
    max_total = max(args.context + args.steps + 8, _ints(args.prompt_lens)[1] + 8)
    settings = RunnerSettings(
        model_id=args.model,
        dtype=args.dtype,
        device=args.device,
        block_size=BLOCK_SIZE,
        max_batch_size=max(batches),
        max_total_tokens=max_total,
        quantize=args.quantize,
        gguf_weights=args.gguf_weights,
    )
    blocks = max(*batches, max_prompts) * _blocks(max_total)
    device = select_device(args.device, settings)
    runner = TorchModelRunner(settings, device=device, num_kv_blocks=blocks)
    theirs = None if args.no_transformers else _load_transformers(args.model, runner.dtype)
    load_before = os.getloadavg()[0]
    rows = [
        row for threads in _ints(args.threads) for row in _measure(runner, theirs, args, threads)
    ]
    c = runner.config
    print(
        f"\n{runner.device.describe()}, {args.dtype}, {c.model_type} ({c.num_hidden_layers} "
        f"layers, hidden {c.hidden_size}), torch {torch.__version__}; load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after; weights: {runner.weights}"
    )
    _print(rows)


if __name__ == "__main__":
    main()
