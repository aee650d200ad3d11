"""GPT-BigCode beyond the shared parity tests: its config defaults and names, refusals, the
fused c_attn split in both layouts, greedy tokens, learned positions (added to given input
embeddings, a --max-total-tokens past them refused); int8: test_family_starcoder2.py."""

from __future__ import annotations

import pytest
import torch
from msgspec.structs import replace

from tgi_core.contract import DecodeItem, DecodeShape, ImageInput, PrefillItem, StepPlan
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.models import resolve_model_class
from tgi_hpu_kernels.models.gpt_bigcode import GPTBigCodeForCausalLM
from tgi_hpu_kernels.parallel.sharding import shard_config
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_hpu_kernels.testing import greedy_reference, prefill_plan, save_tiny_checkpoint

BASE = {"vocab_size": 32, "n_embd": 64, "n_layer": 3, "n_head": 4}
PROMPTS = ([3, 17, 29, 41, 5, 9, 60, 12, 7, 101, 33], [7, 8, 9, 10, 11, 12])


def test_a_bare_config_takes_gpt_bigcodes_defaults():
    config = GPTBigCodeForCausalLM.parse_config({**BASE, "model_type": "gpt_bigcode"})
    assert config.num_key_value_heads == 1  # multi_query
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 3, 4)
    assert config.head_dim == 16
    assert config.intermediate_size == 4 * 64  # n_inner None
    assert config.max_position_embeddings == 1024  # n_positions' default
    assert (config.qkv_bias, config.o_bias, config.mlp_bias) == (True, True, True)
    assert config.tie_word_embeddings
    assert config.rms_norm_eps == 1e-5  # layer_norm_epsilon's default
    assert config.hidden_act == "gelu_pytorch_tanh"


def test_config_fields_are_read():
    raw = {
        **BASE,
        "architectures": ["GPTBigCodeForCausalLM"],  # model_type unknown here
        "multi_query": False,
        "n_inner": 96,
        "n_positions": 512,
        "layer_norm_epsilon": 1e-3,
        "activation_function": "gelu",
        "tie_word_embeddings": False,
    }
    cls = resolve_model_class(raw)
    config = cls.parse_config(raw)
    assert cls is GPTBigCodeForCausalLM
    assert config.num_key_value_heads == 4  # one q/k/v triple per head
    assert config.intermediate_size == 96
    assert config.max_position_embeddings == 512
    assert config.rms_norm_eps == 1e-3
    assert config.hidden_act == "gelu"
    assert not config.tie_word_embeddings


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scale_attn_weights": False}, r"^GPT-BigCode with scale_attn_weights=False is not"),
        ({"add_cross_attention": True}, r"^GPT-BigCode with add_cross_attention=True is not"),
        ({"activation_function": "relu"}, r"hidden_act 'relu' is not supported \(only 'gelu'"),
    ],
)
def test_refusals(fields, message):
    with pytest.raises(ValueError, match=message):
        GPTBigCodeForCausalLM.parse_config({**BASE, **fields})


def test_multi_query_shards_replicate_the_kv_head():
    share = shard_config(GPTBigCodeForCausalLM.parse_config(BASE), 4)
    assert (share.num_attention_heads, share.num_key_value_heads, share.head_dim) == (1, 1, 16)


@pytest.mark.parametrize(
    ("multi_query", "q_rows", "k_rows", "v_rows"),
    [
        # all 4 queries, then the one key and the one value head
        (True, [0, 1, 2, 3], [4], [5]),
        # per head (q, k, v): [q0 k0 v0 | q1 k1 v1 | ...]
        (False, [0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]),
    ],
)
def test_c_attn_split_puts_rows_in_llamas_order(multi_query, q_rows, k_rows, v_rows):
    raw = {**BASE, "multi_query": multi_query}
    heads = 6 if multi_query else 12  # rows of 16 dims
    fused = torch.arange(heads * 16).view(heads, 16)
    split = dict(
        GPTBigCodeForCausalLM.checkpoint_tensors(
            [("transformer.h.1.attn.c_attn.bias", fused.flatten())], raw
        )
    )
    prefix = "model.layers.1.self_attn"
    assert torch.equal(split[f"{prefix}.q_proj.bias"], fused[q_rows].flatten())
    assert torch.equal(split[f"{prefix}.k_proj.bias"], fused[k_rows].flatten())
    assert torch.equal(split[f"{prefix}.v_proj.bias"], fused[v_rows].flatten())


def test_fused_tensors_the_split_cannot_read_are_refused():
    fused = "transformer.h.0.attn.c_attn"
    with pytest.raises(ValueError, match=r"^GPT-BigCode: fused tensor .*qweight' is not supported"):
        list(GPTBigCodeForCausalLM.checkpoint_tensors([(f"{fused}.qweight", torch.zeros(8))], BASE))
    with pytest.raises(ValueError, match=r"has 64 rows, expected 96"):  # 4 queries + k + v
        list(GPTBigCodeForCausalLM.checkpoint_tensors([(f"{fused}.bias", torch.zeros(64))], BASE))


def test_checkpoint_names_map_to_llamas_tree():
    names = [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.ln_f.bias",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.ln_2.bias",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.0.mlp.c_proj.bias",
    ]
    renamed = [
        name
        for name, _ in GPTBigCodeForCausalLM.checkpoint_tensors(
            [(n, torch.zeros(1)) for n in names], BASE
        )
    ]
    assert renamed == [
        "model.embed_tokens.weight",
        "model.wpe.weight",
        "model.norm.bias",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.bias",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.mlp.c_fc.weight",
        "model.layers.0.mlp.c_proj.bias",
    ]


@pytest.mark.parametrize("family", ["gpt_bigcode", "gpt_bigcode_mha"])
def test_greedy_tokens_are_transformers(tmp_path, make_runner, family):
    """32 greedy tokens per prompt, batched and paged, as transformers picks them (weights
    large enough that the continuations vary)."""
    hf_model = save_tiny_checkpoint(tmp_path, family, initializer_range=0.2)
    runner = make_runner(tmp_path)
    plan = prefill_plan(PROMPTS, blocks_per_sequence=12, batch_size=2, seq_len=16)
    tokens = [[out.token_id] for out in runner.execute(plan).outputs]
    for step in range(31):
        decode = tuple(
            DecodeItem(i, t[-1], len(p) + step, plan.prefill[i].block_table)
            for i, (p, t) in enumerate(zip(PROMPTS, tokens, strict=True))
        )
        shape = DecodeShape(batch_size=2, num_blocks=12)
        outputs = runner.execute(StepPlan(step_id=step + 1, shape=shape, decode=decode)).outputs
        for t, out in zip(tokens, outputs, strict=True):
            t.append(out.token_id)
    assert tokens == [greedy_reference(hf_model, p, 32) for p in PROMPTS]
    assert all(len(set(t)) > 4 for t in tokens)


def test_positions_are_added_to_given_input_embeddings(tiny_checkpoint):
    """A prompt embedder (a VLM's) writes token 50's embedding over row 2 of each prompt:
    the logits are transformers' for the prompt holding token 50 there, positions added."""
    folder, hf_model = tiny_checkpoint("gpt_bigcode")
    replacement = hf_model.transformer.wte.weight[50].detach()

    def embedder(items: list[PrefillItem], offsets: list[int], embeds: torch.Tensor) -> None:
        for offset in offsets:
            embeds[offset + 2] = replacement

    settings = RunnerSettings(
        model_id=str(folder), dtype="float32", device="cpu", block_size=4, max_total_tokens=128
    )
    runner = TorchModelRunner(settings, device=CpuDevice(), prompt_embedder=embedder)
    plan = prefill_plan(PROMPTS, blocks_per_sequence=4, batch_size=2, seq_len=16)
    image = ImageInput(data=b"", mimetype="image/png", height=1, width=1)
    prefill = tuple(replace(item, images=(image,)) for item in plan.prefill)
    logits = runner.compute_logits(replace(plan, prefill=prefill))
    for i, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            edited = torch.tensor([[*prompt[:2], 50, *prompt[3:]]])
            expected = hf_model(edited).logits[0, -1].float()
        torch.testing.assert_close(logits[i], expected, atol=1e-4, rtol=0)


def test_max_total_tokens_past_the_learned_positions_is_refused(tiny_checkpoint, make_runner):
    folder, _ = tiny_checkpoint("gpt_bigcode")  # n_positions 256
    assert make_runner(folder, max_total_tokens=256).config.max_position_embeddings == 256
    with pytest.raises(ValueError, match=r"^GPT-BigCode has learned positions for 256 tokens: "):
        make_runner(folder, max_total_tokens=257)
