"""Speculative decoding's speed: the engine on the embedded SmolLM2, ``--speculate N`` against
plain decoding, runs interleaved.

Two workloads, greedy, EOS ignored: one stream asked to print a small code file again with a
rename (the repetitive case n-gram drafts are for), and 32 streams of short chat questions
(the full-batch case, where drafts must cost nothing). Reports output tokens/s of the decode
phase per run, the median, and the CPU's flags.

Usage: ``hatch run bench:speculate [--speculate 3] [--runs 3] [--dtype float32]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from tgi_core.contract import GenerationRequest, SamplingParams, TokenEvent
from tgi_core.settings.slices import RunnerSettings, SchedulerSettings
from tgi_core.testing import smollm2_tokenizer
from tgi_core.tokenization import Tokenizer
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_scheduler import Engine
from tgi_scheduler.testing import run_until_idle

CODE = "\n\n".join(
    f"def {name}(a, b):\n    return a {op} b\n"
    for name, op in (("add", "+"), ("sub", "-"), ("mul", "*"))
)
QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers.",
    "How do I boil an egg?",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Give me a tip for learning Python.",
)


def _chat(tokenizer: Tokenizer, text: str) -> tuple[int, ...]:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}])
    return tuple(tokenizer.encode(prompt, add_special_tokens=False))


def _tokens_per_second(
    prompts: list[tuple[int, ...]], new_tokens: int, speculate: int, dtype: str
) -> float:
    runner = TorchModelRunner(
        RunnerSettings(
            dtype=dtype, device="cpu", block_size=16, max_total_tokens=1024, speculate=speculate
        ),
        num_kv_blocks=1 + len(prompts) * 64,
    )
    settings = SchedulerSettings(
        max_input_tokens=512,
        max_total_tokens=1024,
        block_size=16,
        max_batch_size=len(prompts),
        max_batch_prefill_tokens=8192,
        speculate=speculate,
    )
    engine = Engine.create(settings, runner, eos_token_ids=[])
    for i, prompt in enumerate(prompts):
        engine.add_request(
            GenerationRequest(i, prompt, new_tokens, SamplingParams(), ignore_eos=True)
        )
    engine.step()  # every prefill: the decode phase is timed
    start = time.perf_counter()
    events = run_until_idle(engine)
    seconds = time.perf_counter() - start
    return sum(isinstance(e, TokenEvent) for evs in events.values() for e in evs) / seconds


def _cpu_flags() -> str:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    with Path("/proc/cpuinfo").open() as cpuinfo:
        flags = next(
            (line.split(":")[1].split() for line in cpuinfo if line.startswith("flags")), []
        )
    return " ".join(flag for flag in wanted if flag in flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speculate", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    tokenizer = smollm2_tokenizer()
    edit = _chat(
        tokenizer, f"Rename every parameter b to y in this code and print it again:\n\n{CODE}"
    )
    chats = [_chat(tokenizer, f"{q} ({i})") for i, q in enumerate(QUESTIONS * 4)]
    workloads = {
        "1 stream, code edit, 128 tokens": ([edit], 128),
        "32 streams, chat, 64 tokens": (chats, 64),
    }
    print(f"CPU flags: {_cpu_flags()}; dtype {args.dtype}")
    for name, (prompts, new_tokens) in workloads.items():
        results: dict[int, list[float]] = {0: [], args.speculate: []}
        for _ in range(args.runs):
            for speculate, runs in results.items():  # interleaved
                runs.append(_tokens_per_second(prompts, new_tokens, speculate, args.dtype))
        for speculate, runs in results.items():
            spread = ", ".join(f"{r:.1f}" for r in runs)
            median = statistics.median(runs)
            print(f"{name}: --speculate {speculate}: median {median:.1f} tok/s ({spread})")


if __name__ == "__main__":
    main()
