"""Mixtral beyond the shared parity tests: transformers 5's fused expert layout loads like the
classic one, ``--quantize bitsandbytes`` quantizes every expert (the router stays dense),
the fused CPU decoder stack is never used, and a router asking for more experts than exist
is refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import Tensor

from tgi_hpu_kernels.layers import LMHead, QuantizedLinear, WeightQuantization
from tgi_hpu_kernels.models.mixtral import MixtralForCausalLM
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_hpu_kernels.testing import teacher_forced_logits

MakeRunner = Callable[..., TorchModelRunner]
TinyCheckpoint = Callable[[str], tuple[Path, torch.nn.Module]]
PREFILL, LENGTH = 6, 14


def _sequences() -> list[list[int]]:
    gen = torch.Generator().manual_seed(11)
    return [torch.randint(3, 128, (LENGTH,), generator=gen).tolist() for _ in range(3)]


def _logits(runner: TorchModelRunner) -> Tensor:
    return teacher_forced_logits(runner, _sequences(), PREFILL, block_size=4)


def _reference(model: torch.nn.Module) -> Tensor:
    with torch.no_grad():
        return torch.stack([model(torch.tensor([s])).logits[0, :-1] for s in _sequences()])


def test_fused_expert_checkpoint_matches_transformers(
    tiny_checkpoint: TinyCheckpoint, make_runner: MakeRunner, tmp_path: Path
) -> None:
    _, hf_model = tiny_checkpoint("mixtral")
    hf_model.save_pretrained(tmp_path, save_original_format=False)  # type: ignore[operator]
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        shape = handle.get_slice("model.layers.0.mlp.experts.gate_up_proj").get_shape()
    assert shape == [4, 2 * 96, 64]  # [experts, 2 * intermediate, hidden]
    logits = _logits(make_runner(tmp_path))
    torch.testing.assert_close(logits, _reference(hf_model), atol=1e-4, rtol=0)


def test_bitsandbytes_quantizes_every_expert_and_keeps_the_router_dense(
    tiny_checkpoint: TinyCheckpoint, make_runner: MakeRunner
) -> None:
    folder, _ = tiny_checkpoint("mixtral")
    dense = _logits(make_runner(folder))
    runner = make_runner(folder, quantize="bitsandbytes")
    modules = dict(runner._model.named_modules())
    for layer in range(2):
        for expert in range(4):
            for proj in ("gate_up_proj", "down_proj"):
                module = modules[f"model.layers.{layer}.mlp.experts.{expert}.{proj}"]
                assert type(module) is QuantizedLinear and module.scheme == WeightQuantization(8)
        router = modules[f"model.layers.{layer}.mlp.gate"].weight
        assert router.dtype == torch.float32 and router.shape == (4, 64)
    assert type(modules["lm_head"]) is LMHead
    cosine = torch.nn.functional.cosine_similarity(_logits(runner), dense, dim=-1)
    # Int8 error is small on every row; near a router tie it can pick another expert for a
    # token (here one row of 39), which moves that row more but not to noise.
    assert float(cosine.median()) > 0.999 and float(cosine.min()) > 0.9


def test_the_fused_decoder_stack_is_never_used(
    tiny_checkpoint: TinyCheckpoint, make_runner: MakeRunner
) -> None:
    # The CPU's fused stack computes a dense MLP; a MoE layer has none to give it.
    model = make_runner(tiny_checkpoint("mixtral")[0])._model
    assert isinstance(model, MixtralForCausalLM) and model.model.fuse_layers is False


def test_more_experts_per_token_than_experts_is_refused() -> None:
    raw = {
        "model_type": "mixtral",
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_local_experts": 4,
        "num_experts_per_tok": 5,
    }
    with pytest.raises(ValueError, match=r"^num_experts_per_tok \(5\) must be between 1 and "):
        MixtralForCausalLM.parse_config(raw)
    config = MixtralForCausalLM.parse_config({**raw, "num_experts_per_tok": 2})
    assert (config.num_local_experts, config.num_experts_per_tok) == (4, 2)  # type: ignore[attr-defined]
