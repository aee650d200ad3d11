"""StarCoder2 beyond the shared parity tests: its config defaults and refusals, a checkpoint
without biases and with its own LM head, and int8 weight-only quantization (with Falcon and
GPT-BigCode, whose loaded projections have StarCoder2's names)."""

from __future__ import annotations

import pytest
import torch

from tgi_hpu_kernels.layers import QuantizedLinear
from tgi_hpu_kernels.models import resolve_model_class
from tgi_hpu_kernels.models.starcoder2 import Starcoder2ForCausalLM
from tgi_hpu_kernels.testing import prefill_plan, save_tiny_checkpoint

BASE = {
    "vocab_size": 32,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
PROMPTS = ([3, 17, 29, 41, 5, 9, 60, 12, 7, 101, 33], [7, 8, 9, 10, 11, 12])


def test_a_bare_config_takes_starcoder2s_defaults():
    config = Starcoder2ForCausalLM.parse_config({**BASE, "model_type": "starcoder2"})
    assert (config.qkv_bias, config.o_bias, config.mlp_bias) == (True, True, True)
    assert config.tie_word_embeddings
    assert config.rms_norm_eps == 1e-5  # norm_epsilon's default
    assert config.sliding_windows == ()
    assert config.hidden_act == "gelu_pytorch_tanh"


def test_config_fields_are_read():
    raw = {
        **BASE,
        "architectures": ["Starcoder2ForCausalLM"],  # model_type unknown here
        "use_bias": False,
        "tie_word_embeddings": False,
        "norm_epsilon": 1e-3,
        "rms_norm_eps": 1e-6,  # not StarCoder2's: ignored
        "sliding_window": 16,
        "hidden_act": "gelu",
    }
    cls = resolve_model_class(raw)
    config = cls.parse_config(raw)
    assert cls is Starcoder2ForCausalLM
    assert (config.qkv_bias, config.o_bias, config.mlp_bias) == (False, False, False)
    assert not config.tie_word_embeddings
    assert config.rms_norm_eps == 1e-3
    assert config.sliding_windows == (16, 16, 16)
    assert config.hidden_act == "gelu"


def test_a_non_gelu_activation_is_refused():
    with pytest.raises(ValueError, match=r"hidden_act 'silu' is not supported \(only 'gelu'"):
        Starcoder2ForCausalLM.parse_config({**BASE, "hidden_act": "silu"})


def test_without_biases_and_with_its_own_head_logits_match_transformers(tmp_path, make_runner):
    hf_model = save_tiny_checkpoint(
        tmp_path, "starcoder2", use_bias=False, tie_word_embeddings=False, hidden_act="gelu"
    )
    runner = make_runner(tmp_path)
    assert not runner.config.qkv_bias and not runner.config.tie_word_embeddings
    plan = prefill_plan(PROMPTS, blocks_per_sequence=4, batch_size=2, seq_len=16)
    logits = runner.compute_logits(plan)
    for i, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            expected = hf_model(torch.tensor([prompt])).logits[0, -1].float()
        torch.testing.assert_close(logits[i], expected, atol=1e-4, rtol=0)


# the families whose projections, once loaded, have StarCoder2's names (c_fc/c_proj MLP)
@pytest.mark.parametrize(
    "family", ["starcoder2", "falcon", "falcon_new", "gpt_bigcode", "gpt_bigcode_mha"]
)
def test_int8_weight_only_quantization_loads_and_stays_close(tiny_checkpoint, make_runner, family):
    folder, _ = tiny_checkpoint(family)
    dense = make_runner(folder)
    int8 = make_runner(folder, quantize="bitsandbytes")
    quantized = {
        name.split(".")[-1]
        for name, module in int8._model.named_modules()
        if isinstance(module, QuantizedLinear)
    }
    assert quantized == {"qkv_proj", "o_proj", "c_fc", "c_proj"}  # the LM head stays dense
    plan = prefill_plan(PROMPTS, blocks_per_sequence=4, batch_size=2, seq_len=16)
    expected, logits = dense.compute_logits(plan), int8.compute_logits(plan)
    scale = float(expected.abs().max())
    torch.testing.assert_close(logits, expected, atol=0.02 * scale, rtol=0)
    assert not torch.equal(logits, expected)  # the weights really are int8
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
