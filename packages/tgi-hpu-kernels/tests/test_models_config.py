"""Config parsing (transformers 4 and 5 forms), the model registry, and RoPE frequencies."""

from __future__ import annotations

import pytest
import torch

from tgi_hpu_kernels.layers.rotary import RopeConfig, RotaryEmbedding, inverse_frequencies
from tgi_hpu_kernels.models import UnsupportedModelError, resolve_model_class
from tgi_hpu_kernels.models.config import parse_rope

BASE = {
    "vocab_size": 32,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def _parse(raw: dict) -> object:
    return resolve_model_class(raw).parse_config(raw)


def test_transformers4_rope_scaling_is_read():
    rope = parse_rope({"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert rope == RopeConfig(rope_type="linear", theta=500000.0, factor=2.0)


def test_transformers5_rope_parameters_are_read():
    raw = {
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 5e5,
            "factor": 8.0,
            "original_max_position_embeddings": 8192,
        }
    }
    rope = parse_rope(raw)
    assert (rope.rope_type, rope.theta, rope.original_max_position_embeddings) == (
        "llama3",
        5e5,
        8192,
    )


def test_unsupported_rope_type_is_named():
    with pytest.raises(ValueError, match="rope type 'yarn' is not supported; supported: default"):
        parse_rope({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


def test_qwen2_windows_from_a_transformers4_config():
    raw = {
        **BASE,
        "model_type": "qwen2",
        "use_sliding_window": True,
        "sliding_window": 16,
        "max_window_layers": 2,
    }
    config = _parse(raw)
    assert config.sliding_windows == (None, None, 16)
    assert config.qkv_bias and not config.o_bias
    assert _parse({**raw, "use_sliding_window": False}).sliding_windows == ()


def test_mistral_window_applies_to_every_layer():
    assert (
        _parse({**BASE, "model_type": "mistral", "sliding_window": 8}).sliding_windows == (8,) * 3
    )
    assert _parse({**BASE, "model_type": "mistral", "sliding_window": None}).window is None


def test_llama_attention_bias_covers_output_projection():
    config = _parse({**BASE, "model_type": "llama", "attention_bias": True})
    assert config.qkv_bias and config.o_bias and config.head_dim == 16


def test_architectures_pick_the_family_when_model_type_is_unknown():
    cls = resolve_model_class({"model_type": "qwen2_custom", "architectures": ["Qwen2ForCausalLM"]})
    assert cls.__name__ == "Qwen2ForCausalLM"


def test_unsupported_model_type_lists_the_supported_ones():
    with pytest.raises(UnsupportedModelError) as err:
        resolve_model_class({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    assert str(err.value) == (
        "Unsupported model type 'gpt2'; supported model types: falcon, gemma, gemma2, "
        "gpt_bigcode, llama, mistral, mixtral, phi3, qwen2, qwen3, starcoder2"
    )


def test_non_silu_activation_is_refused():
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        _parse({**BASE, "model_type": "llama", "hidden_act": "gelu"})


@pytest.mark.parametrize(
    ("rope_parameters", "seq_len"),
    [
        ({"rope_type": "default", "rope_theta": 10000.0}, None),
        ({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}, None),
        ({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}, 700),
        (
            {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            None,
        ),
    ],
)
def test_inverse_frequencies_match_transformers(rope_parameters, seq_len):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = transformers.LlamaConfig(**BASE, rope_parameters=rope_parameters)
    rope = parse_rope(hf_config.to_dict())
    ours = inverse_frequencies(rope, 16, 256, seq_len)
    if rope.rope_type == "default":
        expected = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    else:
        expected, _ = ROPE_INIT_FUNCTIONS[rope.rope_type](hf_config, None, seq_len=seq_len)
    torch.testing.assert_close(ours, expected, atol=0, rtol=1e-6)


def test_dynamic_tables_grow_in_place_past_the_trained_length():
    rope = RopeConfig(rope_type="dynamic", factor=2.0)
    rotary = RotaryEmbedding(
        rope,
        head_dim=16,
        max_position_embeddings=64,
        max_positions=256,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    table = rotary.cos
    before = rotary.cos[100].clone()
    rotary.ensure_length(32)  # within the trained length: nothing to do
    torch.testing.assert_close(rotary.cos[100], before)
    rotary.ensure_length(128)
    assert rotary.cos is table  # same storage: captured graphs keep reading it
    expected = torch.outer(torch.tensor([100.0]), inverse_frequencies(rope, 16, 64, 128)).cos()
    torch.testing.assert_close(rotary.cos[100, :8], expected[0])
