"""Falcon beyond the shared parity tests: its config defaults and variants, refusals, the
block variants the tiny configs leave out (int8: test_family_starcoder2.py)."""

from __future__ import annotations

import pytest
import torch

from tgi_hpu_kernels.models import resolve_model_class
from tgi_hpu_kernels.models.falcon import FalconForCausalLM
from tgi_hpu_kernels.parallel.sharding import shard_config
from tgi_hpu_kernels.testing import prefill_plan, save_tiny_checkpoint

BASE = {"vocab_size": 32, "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4}
PROMPTS = ([3, 17, 29, 41, 5, 9, 60, 12, 7, 101, 33], [7, 8, 9, 10, 11, 12])


def test_a_bare_config_takes_falcon_7b_defaults():
    config = FalconForCausalLM.parse_config({**BASE, "model_type": "falcon"})
    assert config.num_key_value_heads == 1  # multi_query
    assert config.head_dim == 16
    assert config.intermediate_size == 4 * 64
    assert config.parallel_norms == 1  # parallel_attn, one shared LayerNorm
    assert (config.qkv_bias, config.o_bias, config.mlp_bias) == (False, False, False)
    assert config.tie_word_embeddings
    assert config.rms_norm_eps == 1e-5  # layer_norm_epsilon's default
    assert config.hidden_act == "gelu"


@pytest.mark.parametrize(
    ("fields", "kv_heads", "norms"),
    [
        ({"new_decoder_architecture": True, "num_kv_heads": 2}, 2, 2),
        # the new architecture is parallel whatever parallel_attn says
        ({"new_decoder_architecture": True, "parallel_attn": False}, 4, 2),
        ({"new_decoder_architecture": True, "num_ln_in_parallel_attn": 1}, 4, 1),
        ({"multi_query": False, "num_kv_heads": 2}, 4, 1),  # one q/k/v triple per head
        ({"parallel_attn": False}, 1, 0),
    ],
)
def test_architecture_fields_pick_kv_heads_and_block(fields, kv_heads, norms):
    raw = {**BASE, "architectures": ["FalconForCausalLM"], **fields}
    cls = resolve_model_class(raw)
    config = cls.parse_config(raw)
    assert cls is FalconForCausalLM
    assert (config.num_key_value_heads, config.parallel_norms) == (kv_heads, norms)


def test_config_fields_are_read():
    raw = {
        **BASE,
        "bias": True,
        "ffn_hidden_size": 96,
        "layer_norm_epsilon": 1e-3,
        "tie_word_embeddings": False,
        "rope_theta": 500.0,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
    }
    config = FalconForCausalLM.parse_config(raw)
    assert (config.qkv_bias, config.o_bias, config.mlp_bias) == (True, True, True)
    assert config.intermediate_size == 96
    assert config.rms_norm_eps == 1e-3
    assert not config.tie_word_embeddings
    assert (config.rope.rope_type, config.rope.theta, config.rope.factor) == ("dynamic", 500, 2)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"alibi": True}, r"^Falcon with alibi=True is not supported: ALiBi is not implemented$"),
        ({"activation": "relu"}, r"hidden_act 'relu' is not supported \(only 'gelu'"),
    ],
)
def test_refusals(fields, message):
    with pytest.raises(ValueError, match=message):
        FalconForCausalLM.parse_config({**BASE, **fields})


def test_multi_query_shards_replicate_the_kv_head():
    share = shard_config(FalconForCausalLM.parse_config(BASE), 4)
    assert (share.num_attention_heads, share.num_key_value_heads, share.head_dim) == (1, 1, 16)


def test_fused_tensors_the_split_cannot_read_are_refused():
    raw = {**BASE, "new_decoder_architecture": True, "num_kv_heads": 2}
    fused = "transformer.h.0.self_attention.query_key_value"
    with pytest.raises(ValueError, match=r"fused tensor .*qweight' is not supported"):
        list(FalconForCausalLM.checkpoint_tensors([(f"{fused}.qweight", torch.zeros(8, 96))], raw))
    with pytest.raises(ValueError, match=r"has 64 rows, expected 128"):
        list(FalconForCausalLM.checkpoint_tensors([(f"{fused}.weight", torch.zeros(64, 64))], raw))


def test_new_architecture_split_puts_each_groups_rows_in_llamas_order():
    raw = {**BASE, "new_decoder_architecture": True, "num_kv_heads": 2}
    head = torch.arange(8 * 16).view(8, 16)  # rows: [q0 q1 k0 v0 | q2 q3 k1 v1] x 16 dims
    split = dict(
        FalconForCausalLM.checkpoint_tensors(
            [("transformer.h.1.self_attention.query_key_value.bias", head.flatten())], raw
        )
    )
    prefix = "model.layers.1.self_attn"
    assert torch.equal(split[f"{prefix}.q_proj.bias"], head[[0, 1, 4, 5]].flatten())
    assert torch.equal(split[f"{prefix}.k_proj.bias"], head[[2, 6]].flatten())
    assert torch.equal(split[f"{prefix}.v_proj.bias"], head[[3, 7]].flatten())


@pytest.mark.parametrize(
    "overrides",
    [
        # old architecture, sequential block, one q/k/v triple per head, no biases, own head
        {"multi_query": False, "parallel_attn": False, "bias": False, "tie_word_embeddings": False},
        # new architecture with one LayerNorm shared by attention and MLP
        {"new_decoder_architecture": True, "num_kv_heads": 2, "num_ln_in_parallel_attn": 1},
    ],
    ids=["sequential", "new-one-norm"],
)
def test_other_block_variants_match_transformers(tmp_path, make_runner, overrides):
    hf_model = save_tiny_checkpoint(tmp_path, "falcon", **overrides)
    runner = make_runner(tmp_path)
    plan = prefill_plan(PROMPTS, blocks_per_sequence=4, batch_size=2, seq_len=16)
    logits = runner.compute_logits(plan)
    for i, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            expected = hf_model(torch.tensor([prompt])).logits[0, -1].float()
        torch.testing.assert_close(logits[i], expected, atol=1e-4, rtol=0)
