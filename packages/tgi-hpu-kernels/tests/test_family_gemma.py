"""Gemma and Gemma 2 specifics the parity tests do not reach: their config rules, the bf16
rounding of the embedding scale, int8 weight-only quantization, and that the fused decoder
stack (Llama's SiLU layer) never runs them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from transformers.models.gemma.modeling_gemma import GemmaTextScaledWordEmbedding

from tgi_hpu_kernels.layers import QuantizedLinear
from tgi_hpu_kernels.models.gemma import GemmaForCausalLM, ScaledEmbedding
from tgi_hpu_kernels.models.gemma2 import Gemma2ForCausalLM
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_hpu_kernels.testing import teacher_forced_logits

TinyCheckpoint = Callable[[str], tuple[Path, torch.nn.Module]]
MakeRunner = Callable[..., TorchModelRunner]

_RAW: dict[str, Any] = {
    "model_type": "gemma",
    "vocab_size": 8,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


def test_missing_fields_take_transformers_gemma_defaults() -> None:
    config = GemmaForCausalLM.parse_config({**_RAW, "mlp_bias": True})
    assert config.head_dim == 256  # not hidden_size / heads
    assert config.tie_word_embeddings
    assert config.max_position_embeddings == 8192
    assert not config.mlp_bias  # transformers' Gemma MLP has no bias


@pytest.mark.parametrize(
    "acts",
    [
        {"hidden_act": "gelu"},  # the legacy name transformers reads as the tanh GELU
        {"hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"},
        {"hidden_act": "gelu_pytorch_tanh"},
    ],
)
def test_tanh_gelu_names_are_accepted(acts: dict[str, str]) -> None:
    assert GemmaForCausalLM.parse_config({**_RAW, **acts}).intermediate_size == 32


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"hidden_act": "silu"}, r"^gemma hidden_act 'silu' is not supported"),
        ({"hidden_activation": "relu"}, r"^gemma hidden_activation 'relu' is not supported"),
        ({"use_bidirectional_attention": True}, r"^gemma use_bidirectional_attention"),
    ],
)
def test_unsupported_configs_are_refused(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GemmaForCausalLM.parse_config({**_RAW, **extra})


def test_gemma2_missing_fields_take_transformers_defaults() -> None:
    raw = {**_RAW, "model_type": "gemma2", "num_hidden_layers": 3}
    config = Gemma2ForCausalLM.parse_config(raw)
    assert config.attention_scale == 256**-0.5  # query_pre_attn_scalar, not head_dim
    assert (config.attn_logit_softcap, config.final_logit_softcap) == (50.0, 30.0)
    assert config.sliding_windows == (4096, None, 4096)  # even layers are local


def test_gemma2_explicit_values_and_nulls() -> None:
    raw = {
        **_RAW,
        "model_type": "gemma2",
        "num_hidden_layers": 2,
        "query_pre_attn_scalar": 144,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "sliding_window": 512,
        "layer_types": ["full_attention", "sliding_attention"],
    }
    config = Gemma2ForCausalLM.parse_config(raw)
    assert config.attention_scale == 144**-0.5
    assert config.attn_logit_softcap is None and config.final_logit_softcap is None
    assert config.sliding_windows == (None, 512)
    unwindowed = Gemma2ForCausalLM.parse_config({**raw, "sliding_window": None})
    assert unwindowed.sliding_window(1) is None


def test_gemma2_reads_hidden_activation_only() -> None:
    # transformers' Gemma 2 takes "gelu" literally (the exact GELU) and ignores hidden_act.
    raw = {**_RAW, "model_type": "gemma2", "hidden_act": "silu"}
    assert Gemma2ForCausalLM.parse_config(raw).hidden_size == 16
    with pytest.raises(ValueError, match=r"^gemma2 hidden_activation 'gelu' is not supported"):
        Gemma2ForCausalLM.parse_config({**raw, "hidden_activation": "gelu"})


def test_bfloat16_embedding_scale_is_rounded_as_in_transformers() -> None:
    torch.manual_seed(0)
    ours = ScaledEmbedding(10, 3072).to(torch.bfloat16)
    theirs = GemmaTextScaledWordEmbedding(10, 3072, 0, embed_scale=3072**0.5)
    theirs = theirs.to(torch.bfloat16)
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
        ids = torch.arange(10)
        expected = theirs(ids)
        assert torch.equal(ours(ids), expected)
        # sqrt(3072) = 55.43 becomes 55.5 in bf16: the unrounded factor gives other bits
        assert not torch.equal((ours.weight[ids].float() * 3072**0.5).bfloat16(), expected)


def _logits(runner: TorchModelRunner) -> Tensor:
    gen = torch.Generator().manual_seed(3)
    sequences = [torch.randint(3, 128, (n,), generator=gen).tolist() for n in (14, 14)]
    return teacher_forced_logits(runner, sequences, prefill_len=6, block_size=4)


@pytest.mark.parametrize("family", ["gemma", "gemma2"])
def test_int8_weight_only_quantization_serves_gemma(
    tiny_checkpoint: TinyCheckpoint, make_runner: MakeRunner, family: str
) -> None:
    folder, _ = tiny_checkpoint(family)
    dense = _logits(make_runner(folder))
    runner = make_runner(folder, quantize="bitsandbytes")
    mlp = dict(runner._model.named_modules())["model.layers.1.mlp.gate_up_proj"]
    assert type(mlp) is QuantizedLinear
    cosine = torch.nn.functional.cosine_similarity(_logits(runner), dense, dim=-1)
    assert float(cosine.min()) > 0.99


@pytest.mark.parametrize("family", ["gemma", "gemma2"])
def test_bfloat16_decode_never_takes_the_fused_llama_stack(
    tiny_checkpoint: TinyCheckpoint, make_runner: MakeRunner, family: str
) -> None:
    """Where the CPU has the fused bf16 stack, it would run a SiLU MLP (and neither Gemma 2's
    extra norms nor its caps): the bits must be those of the family's own layers."""
    folder, _ = tiny_checkpoint(family)
    fused, per_op = (
        _logits(make_runner(folder, dtype="bfloat16", fused=use)) for use in (True, False)
    )
    assert torch.equal(fused, per_op)
