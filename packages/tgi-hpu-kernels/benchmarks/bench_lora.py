"""What LoRA adapters cost per token: the engine on the embedded SmolLM2 at 32 streams, with
4 adapters loaded, every request on the base model against the requests spread over the 4
adapters, runs interleaved.

The adapters are random PEFT-layout adapters of rank ``--rank`` on every projection of every
layer (q, k, v, o, gate, up, down), written to a temporary folder. Reports decode output
tokens/s per run, the median, and the CPU's flags.

Usage: ``hatch run bench:lora [--rank 16] [--runs 3] [--dtype float32]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from tgi_core.contract import GenerationRequest, SamplingParams, TokenEvent
from tgi_core.settings.slices import RunnerSettings, SchedulerSettings
from tgi_core.testing import smollm2_tokenizer
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_scheduler import Engine
from tgi_scheduler.testing import run_until_idle

# SmolLM2-135M: 30 layers, hidden 576, 9 heads and 3 KV heads of 64, MLP 1536
SHAPES = {
    "self_attn.q_proj": (576, 576),
    "self_attn.k_proj": (576, 192),
    "self_attn.v_proj": (576, 192),
    "self_attn.o_proj": (576, 576),
    "mlp.gate_proj": (576, 1536),
    "mlp.up_proj": (576, 1536),
    "mlp.down_proj": (1536, 576),
}
NUM_ADAPTERS, NUM_STREAMS, NEW_TOKENS = 4, 32, 64


def _write_adapter(folder: Path, rank: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(30):
        for name, (fan_in, fan_out) in SHAPES.items():
            prefix = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = (
                torch.randn(rank, fan_in, generator=generator) * 0.01
            )
            tensors[f"{prefix}.lora_B.weight"] = (
                torch.randn(fan_out, rank, generator=generator) * 0.01
            )
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank}
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _tokens_per_second(entries: tuple[str, ...], mixed: bool, dtype: str) -> float:
    tokenizer = smollm2_tokenizer()
    runner = TorchModelRunner(
        RunnerSettings(dtype=dtype, device="cpu", block_size=16, lora_adapters=entries),
        num_kv_blocks=1 + NUM_STREAMS * 8,
    )
    settings = SchedulerSettings(
        max_input_tokens=64, max_total_tokens=128, block_size=16, max_batch_size=NUM_STREAMS
    )
    engine = Engine.create(settings, runner, eos_token_ids=[])
    for i in range(NUM_STREAMS):
        prompt = tuple(tokenizer.encode(f"Question {i}: what is {i} times {i + 3}?"))
        adapter = f"a{i % NUM_ADAPTERS}" if mixed else None
        engine.add_request(
            GenerationRequest(
                i, prompt, NEW_TOKENS, SamplingParams(), ignore_eos=True, adapter_id=adapter
            )
        )
    engine.step()  # every prefill: the decode phase is timed
    start = time.perf_counter()
    events = run_until_idle(engine)
    seconds = time.perf_counter() - start
    return sum(isinstance(e, TokenEvent) for evs in events.values() for e in evs) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        for i in range(NUM_ADAPTERS):
            _write_adapter(Path(root) / f"a{i}", args.rank, seed=i)
        entries = tuple(f"a{i}={Path(root) / f'a{i}'}" for i in range(NUM_ADAPTERS))
        configs = {"no adapters loaded": ((), False), "4 loaded, base only": (entries, False)}
        configs["4 loaded, 8 streams on each"] = (entries, True)
        results: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(args.runs):
            for name, (loaded, mixed) in configs.items():  # interleaved
                results[name].append(_tokens_per_second(loaded, mixed, args.dtype))
    print(f"{NUM_STREAMS} streams x {NEW_TOKENS} tokens, rank {args.rank}, dtype {args.dtype}")
    for name, runs in results.items():
        spread = ", ".join(f"{r:.1f}" for r in runs)
        print(f"{name}: median {statistics.median(runs):.1f} tok/s ({spread})")


if __name__ == "__main__":
    main()
