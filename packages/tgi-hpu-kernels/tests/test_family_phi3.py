"""Phi-3 beyond the shared parity tests: LongRoPE across the original context (per-position
factor sets, compared with transformers fed the way that gives them), config parsing against
transformers' own rope parameters, int8 weight-only quantization, a rope override, and
refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
)
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.layers import QuantizedLinear
from tgi_hpu_kernels.layers.rotary import attention_scaling, inverse_frequencies
from tgi_hpu_kernels.loader import read_model_config
from tgi_hpu_kernels.models.phi3 import Phi3ForCausalLM
from tgi_hpu_kernels.runner import TorchModelRunner

MakeRunner = Callable[..., TorchModelRunner]
TinyCheckpoint = Callable[[str], tuple[Path, torch.nn.Module]]

ORIGINAL = 64  # the tiny config's original_max_position_embeddings
ATOL = 1e-4
SHORT = [1.0, 1.1, 1.3, 1.6, 2.0, 2.5]
LONG = [1.5, 2.0, 3.0, 4.5, 6.0, 8.0]


def _transformers_logits(model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    """transformers' logits at every position, fed as generation feeds it: the first
    ``ORIGINAL`` tokens in one forward (short factors), then one token per cached forward
    (long factors from position ``ORIGINAL`` on)."""
    cache = transformers.DynamicCache(config=cast(transformers.PretrainedConfig, model.config))
    chunks = [tokens[:ORIGINAL], *([t] for t in tokens[ORIGINAL:])]
    rows = []
    with torch.no_grad():
        for chunk in chunks:
            out = model(torch.tensor([chunk]), cache=cache, use_cache=True)
            rows.append(out.logits[0].float())
    return torch.cat(rows)


def _prefill(request_id: int, tokens: list[int], table: tuple[int, ...]) -> PrefillItem:
    return PrefillItem(
        request_id=request_id,
        token_ids=tuple(tokens),
        num_prompt_tokens=len(tokens),
        num_cached_tokens=0,
        block_table=table,
        sampling=SamplingParams(),
    )


@pytest.mark.parametrize("mode", [{"static": False}, {"static": True}])
def test_longrope_across_the_original_context_matches_transformers(
    tiny_checkpoint: TinyCheckpoint, make_runner: MakeRunner, mode: dict[str, bool]
) -> None:
    """A 70-token prompt (past the original context: long factors from position 64 on) and
    a 50-token one that crosses it while decoding, in one batch, then 24 decode steps."""
    folder, hf_model = tiny_checkpoint("phi3")
    runner = make_runner(folder, num_kv_blocks=64, **mode)
    gen = torch.Generator().manual_seed(7)
    prompt_lens = (70, 50)
    num_decode = 24
    sequences = [
        torch.randint(3, 128, (p + num_decode,), generator=gen).tolist() for p in prompt_lens
    ]
    references = [_transformers_logits(hf_model, s) for s in sequences]
    tables = [tuple(range(24)), tuple(range(24, 43))]
    rows = zip(sequences, prompt_lens, tables, strict=True)
    prefill = tuple(_prefill(i, s[:p], t) for i, (s, p, t) in enumerate(rows))
    logits = runner.compute_logits(StepPlan(step_id=0, shape=PrefillShape(2, 72), prefill=prefill))
    for i, p in enumerate(prompt_lens):
        torch.testing.assert_close(logits[i], references[i][p - 1], atol=ATOL, rtol=0)
    # transformers' single forward over the long prompt uses long factors for all 70
    # positions: not our rule, and the difference shows the factor sets matter here.
    with torch.no_grad():
        one_forward = hf_model(torch.tensor([sequences[0][:70]])).logits[0, -1]
    assert (one_forward - logits[0]).abs().max() > 1e-2

    for step in range(num_decode):
        decode = tuple(
            DecodeItem(request_id=i, token_id=s[p + step], position=p + step, block_table=t)
            for i, (s, p, t) in enumerate(zip(sequences, prompt_lens, tables, strict=True))
        )
        plan = StepPlan(step_id=step + 1, shape=DecodeShape(2, 24), decode=decode)
        logits = runner.compute_logits(plan)
        for i, p in enumerate(prompt_lens):
            torch.testing.assert_close(
                logits[i], references[i][p + step], atol=ATOL, rtol=0, msg=f"step {step} seq {i}"
            )


# What a Phi-3 config.json holds besides its rope settings.
BASE = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "partial_rotary_factor": 0.75,
    "pad_token_id": 0,
}


@pytest.mark.parametrize(
    "values",
    [
        # transformers 4 form: legacy "su" type, original context and partial factor at the top
        {
            "rope_scaling": {"type": "su", "short_factor": SHORT, "long_factor": LONG},
            "max_position_embeddings": 4096,
            "original_max_position_embeddings": 256,
        },
        # no original context: Phi3Config's 4096, below max_position_embeddings
        {
            "rope_scaling": {"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG},
            "max_position_embeddings": 16384,
        },
        # transformers 5 form, an explicit factor and attention factor
        {
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 5000.0,
                "short_factor": SHORT,
                "long_factor": LONG,
                "factor": 8.0,
                "attention_factor": 1.3,
                "partial_rotary_factor": 0.75,
            },
            "original_max_position_embeddings": 64,
        },
    ],
)
def test_rope_parameters_match_transformers(values: dict[str, Any]) -> None:
    raw = {**BASE, **values}
    hf_config = transformers.Phi3Config(**raw)
    rope = Phi3ForCausalLM.parse_config(raw).rope
    hf_rope = cast(dict[str, Any], hf_config.rope_parameters)
    original = int(hf_rope["original_max_position_embeddings"])
    assert rope.original_max_position_embeddings == original
    max_positions = hf_config.max_position_embeddings
    for seq_len in (None, original + 1):
        expected, scale = ROPE_INIT_FUNCTIONS["longrope"](hf_config, None, seq_len=seq_len)
        ours = inverse_frequencies(rope, 16, max_positions, seq_len)
        torch.testing.assert_close(ours, expected, atol=0, rtol=0)
        assert attention_scaling(rope) == pytest.approx(scale, rel=1e-12)


def test_int8_weight_only_quantization_serves_phi3(
    tiny_checkpoint: TinyCheckpoint, make_runner: MakeRunner
) -> None:
    folder, _ = tiny_checkpoint("phi3")
    prompt = _prefill(0, list(range(3, 40)), tuple(range(10)))
    plan = StepPlan(step_id=0, shape=PrefillShape(1, 40), prefill=(prompt,))
    dense = make_runner(folder).compute_logits(plan)
    runner = make_runner(folder, quantize="bitsandbytes")
    qkv = dict(runner._model.named_modules())["model.layers.0.self_attn.qkv_proj"]
    assert isinstance(qkv, QuantizedLinear)
    quantized = runner.compute_logits(plan)
    assert torch.nn.functional.cosine_similarity(quantized, dense).min() > 0.99


def test_rope_scaling_override_keeps_the_partial_rotary_factor(
    tiny_checkpoint: TinyCheckpoint,
) -> None:
    folder, _ = tiny_checkpoint("phi3")
    settings = RunnerSettings(model_id=str(folder), rope_scaling="linear", rope_factor=2.0)
    rope = read_model_config(settings)[1].rope
    assert (rope.rope_type, rope.factor, rope.partial_rotary_factor) == ("linear", 2.0, 0.75)


@pytest.mark.parametrize(
    "values,message",
    [
        ({"partial_rotary_factor": 0.7}, r"gives 11 rotated dims of 16"),
        ({"rope_scaling": {"type": "longrope", "long_factor": LONG}}, r"needs 'short_factor'"),
    ],
)
def test_parse_config_refuses(values: dict[str, Any], message: str) -> None:
    raw = {**BASE, **values}
    with pytest.raises(ValueError, match=message):
        Phi3ForCausalLM.parse_config(raw)


def test_checkpoint_tensors_refuse_fused_codes_and_wrong_rows() -> None:
    raw = BASE
    qweight = ("model.layers.0.self_attn.qkv_proj.qweight", torch.zeros(8, 128, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"fused tensor .*qkv_proj\.qweight.* not supported"):
        list(Phi3ForCausalLM.checkpoint_tensors([qweight], raw))
    short = ("model.layers.0.mlp.gate_up_proj.weight", torch.zeros(96, 64))
    with pytest.raises(ValueError, match=r"has 96 rows, expected 192$"):
        list(Phi3ForCausalLM.checkpoint_tensors([short], raw))
