"""The transformers fallback: what it serves (transformers' own logits through our paged
cache), what it refuses (one line each), and remote code only with --trust-remote-code.

Logit parity over prefill, decode, buckets and mixed batches is in test_model_parity.py
(its FAMILIES include gpt_neox and opt, which have no native implementation)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
)
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.loader import read_model_config
from tgi_hpu_kernels.models import UnsupportedModelError
from tgi_hpu_kernels.testing import save_tiny_checkpoint, teacher_forced_logits

ATOL = 1e-4

_REMOTE_CONFIG = """
from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny_remote"
"""

_REMOTE_MODEL = """
from transformers import LlamaForCausalLM

from .configuration_tiny import TinyRemoteConfig


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
"""


def _reference_logits(model: torch.nn.Module, sequences: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(sequences)).logits[:, :-1].float()


def test_unknown_model_type_names_both_paths(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_model"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModelError) as raised:
        read_model_config(RunnerSettings(model_id=str(tmp_path)))
    assert str(raised.value) == (
        "Unsupported model type 'no_such_model'; supported model types: falcon, gemma, gemma2, "
        "gpt_bigcode, llama, mistral, mixtral, phi3, qwen2, qwen3, starcoder2; transformers has "
        "no causal LM for it"
    )


def test_config_of_a_fallback_family_gives_the_runner_its_shapes(tiny_checkpoint):
    folder, _ = tiny_checkpoint("gpt_neox")
    _, config = read_model_config(RunnerSettings(model_id=str(folder)))
    assert (config.model_type, config.num_hidden_layers) == ("gpt_neox", 2)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 4, 16)
    assert config.eos_token_ids == (2,)


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"num_shard": 2}, "--num-shard 2"),
        ({"quantize": "bitsandbytes"}, "--quantize bitsandbytes"),
        ({"quant_config": "measure.json"}, "QUANT_CONFIG"),
        ({"rope_scaling": "linear", "rope_factor": 2.0}, "--rope-scaling linear"),
    ],
)
def test_settings_the_fallback_cannot_honour_are_refused(tiny_checkpoint, settings, refused):
    folder, _ = tiny_checkpoint("opt")
    with pytest.raises(ValueError) as raised:
        read_model_config(RunnerSettings(model_id=str(folder), **settings))
    assert str(raised.value) == (
        "model type 'opt' has no native implementation and is served through transformers, "
        f"which does not support {refused}"
    )


def test_gguf_of_a_family_without_native_code_is_refused(tmp_path):
    path = tmp_path / "tiny-stablelm.gguf"
    writer = gguf.GGUFWriter(str(path), "stablelm")
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"does not support a GGUF file \(give its safetensors"):
        read_model_config(RunnerSettings(model_id=str(path)))


def test_model_without_the_attention_interface_is_recomputed(make_runner, tmp_path):
    """BLOOM's ALiBi attention is its own: the fallback recomputes each sequence's history
    every step and still gives transformers' logits (parity in every mode:
    test_model_parity.py)."""
    reference = save_tiny_checkpoint(tmp_path, "bloom")
    runner = make_runner(tmp_path)
    assert runner.implementation == (
        "transformers BloomForCausalLM (fallback, recomputed every step)"
    )
    sequences = [[(5 * i + 3 * s) % 128 for i in range(13)] for s in range(3)]
    ours = teacher_forced_logits(runner, sequences, prefill_len=5, block_size=4)
    torch.testing.assert_close(ours, _reference_logits(reference, sequences), atol=ATOL, rtol=0)


def test_recomputed_model_keeps_histories_from_prefill_to_release(make_runner, tmp_path):
    save_tiny_checkpoint(tmp_path, "bloom")
    runner = make_runner(tmp_path)
    prefill = PrefillItem(
        request_id=7,
        token_ids=(5, 6, 7, 8),
        num_prompt_tokens=4,
        num_cached_tokens=0,
        block_table=(1, 2),
        sampling=SamplingParams(),
    )
    decode = DecodeItem(request_id=7, token_id=3, position=4, block_table=(1, 2))
    decode_shape = DecodeShape(batch_size=1, num_blocks=2)
    runner.execute(StepPlan(step_id=1, shape=PrefillShape(1, 4), prefill=(prefill,)))
    (output,) = runner.execute(StepPlan(step_id=2, shape=decode_shape, decode=(decode,))).outputs
    assert output.error is None
    released = StepPlan(step_id=3, shape=decode_shape, decode=(decode,), released=(7,))
    with pytest.raises(ValueError, match="sequence 7 was never prefilled here"):
        runner.execute(released)


def _remote_code_checkpoint(folder: Path) -> torch.nn.Module:
    """A Llama under a model type transformers does not know, with its code beside it."""
    reference = save_tiny_checkpoint(folder, "llama")
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="tiny_remote",
        architectures=["TinyRemoteForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_tiny.TinyRemoteConfig",
            "AutoModelForCausalLM": "modeling_tiny.TinyRemoteForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_tiny.py").write_text(_REMOTE_CONFIG)
    (folder / "modeling_tiny.py").write_text(_REMOTE_MODEL)
    return reference


def test_remote_code_is_refused_without_trust_remote_code(make_runner, tmp_path):
    _remote_code_checkpoint(tmp_path)
    with pytest.raises(ValueError) as raised:
        make_runner(tmp_path)
    assert str(raised.value) == (
        "model type 'tiny_remote' needs the checkpoint's own modelling code: pass "
        "--trust-remote-code (and --revision) to run it"
    )


def test_remote_code_runs_with_trust_remote_code(make_runner, tmp_path):
    reference = _remote_code_checkpoint(tmp_path)
    runner = make_runner(tmp_path, trust_remote_code=True)
    assert runner.implementation == "transformers TinyRemoteForCausalLM (fallback)"
    sequences = [[(7 * i + 3 * s) % 128 for i in range(14)] for s in range(2)]
    ours = teacher_forced_logits(runner, sequences, prefill_len=6, block_size=4)
    torch.testing.assert_close(ours, _reference_logits(reference, sequences), atol=ATOL, rtol=0)


def test_native_families_say_so(tiny_checkpoint, make_runner):
    folder, _ = tiny_checkpoint("qwen2")
    assert make_runner(folder).implementation == "native Qwen2ForCausalLM"
    folder, _ = tiny_checkpoint("gpt_neox")
    assert make_runner(folder).implementation == "transformers GPTNeoXForCausalLM (fallback)"
