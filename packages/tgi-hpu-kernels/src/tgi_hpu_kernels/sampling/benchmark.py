"""Micro-benchmark of ``Sampler.sample``: ``python -m tgi_hpu_kernels.sampling.benchmark``.

Times one step for a batch of logits under a few parameter mixes (all greedy, mixed
greedy / penalties / warpers, all sampling) and prints milliseconds per step. Not a test:
the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from tgi_core.contract import SamplingParams
from tgi_hpu_kernels.sampling.sampler import Sampler


def _mixed(i: int) -> SamplingParams:
    """Greedy, greedy with penalties, and three kinds of sampling rows, in turn."""
    kinds = [
        SamplingParams(),
        SamplingParams(repetition_penalty=1.2, top_n_tokens=5),
        SamplingParams(do_sample=True, seed=i, temperature=0.7, top_k=50, top_p=0.9),
        SamplingParams(do_sample=True, seed=i, top_p=0.95, frequency_penalty=0.3),
        SamplingParams(do_sample=True, seed=i, temperature=0.8, typical_p=0.9, top_n_tokens=2),
    ]
    return kinds[i % len(kinds)]


SCENARIOS: dict[str, Callable[[int], SamplingParams]] = {
    "greedy": lambda i: SamplingParams(),
    "mixed": _mixed,
    "sample": lambda i: SamplingParams(do_sample=True, seed=i, temperature=0.7),
}


def time_step(
    params: Callable[[int], SamplingParams],
    *,
    batch_size: int,
    vocab_size: int,
    logit_scale: float,
    num_steps: int,
    device: torch.device,
) -> float:
    """Mean seconds per ``sample`` call, after one warm-up call."""
    sampler = Sampler(vocab_size, device)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab_size, (batch_size, 64), generator=generator)
    for i in range(batch_size):
        sampler.add_sequence(i, params(i), prompt[i].tolist(), 64)
    logits = (torch.randn(batch_size, vocab_size, generator=generator) * logit_scale).to(device)
    request_ids = list(range(batch_size))
    sampler.sample(request_ids, logits)
    start = time.perf_counter()
    for _ in range(num_steps):
        sampler.sample(request_ids, logits)
    return (time.perf_counter() - start) / num_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vocab-size", type=int, default=49152)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--logit-scale",
        type=float,
        nargs="+",
        default=[4.0, 1.0],
        help="std of the random logits: 4 is peaked like an LM, 1 is nearly flat",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"batch {args.batch_size} x vocab {args.vocab_size}, {device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    for scale in args.logit_scale:
        for name, params in SCENARIOS.items():
            seconds = time_step(
                params,
                batch_size=args.batch_size,
                vocab_size=args.vocab_size,
                logit_scale=scale,
                num_steps=args.steps,
                device=device,
            )
            print(f"logit std {scale:>4}: {name:<7} {seconds * 1e3:8.2f} ms/step")


if __name__ == "__main__":
    main()
