"""LoRA adapters: PEFT checkpoints applied per sequence, in one batch with the base model,
equal to PEFT's own forward; what PEFT can save but we do not apply is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tgi_core.contract import GenerationRequest
from tgi_hpu_kernels.testing import save_tiny_lora_adapter, teacher_forced_logits

pytest.importorskip("peft")

ATOL = 1e-4
EVERY_PROJECTION = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEQUENCES = [[(5 * i + 7 * s + 1) % 128 for i in range(13)] for s in range(3)]


def reference(model: torch.nn.Module, sequence: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(torch.tensor([sequence])).logits[0, :-1]
    return logits.float()


@pytest.fixture(scope="module")
def adapters(tiny_checkpoint, tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    base, _ = tiny_checkpoint("llama")
    root = tmp_path_factory.mktemp("lora")
    every = save_tiny_lora_adapter(
        base, root / "every", seed=1, r=4, lora_alpha=8, target_modules=EVERY_PROJECTION
    )
    some = save_tiny_lora_adapter(
        base,
        root / "some",
        seed=2,
        r=2,
        lora_alpha=16,
        use_rslora=True,
        target_modules=["q_proj", "v_proj", "down_proj"],
    )
    return {"every": (root / "every", every), "some": (root / "some", some)}


@pytest.mark.parametrize("static", [False, True], ids=["packed", "static"])
def test_mixed_batch_of_base_and_two_adapters_equals_peft(
    tiny_checkpoint, make_runner, adapters, static
):
    base, base_model = tiny_checkpoint("llama")
    entries = [f"{name}={folder}" for name, (folder, _) in adapters.items()]
    runner = make_runner(base, static=static, lora_adapters=tuple(entries))
    assert runner.lora_adapters == ("every", "some")
    ids = [None, "every", "some"]
    ours = teacher_forced_logits(runner, SEQUENCES, prefill_len=5, block_size=4, adapter_ids=ids)
    models = [base_model, adapters["every"][1], adapters["some"][1]]
    for i, (sequence, model) in enumerate(zip(SEQUENCES, models, strict=True)):
        torch.testing.assert_close(ours[i], reference(model, sequence), atol=ATOL, rtol=0)
    # the adapters change the answer: equality above is not the base model's by accident
    assert (ours[1] - reference(base_model, SEQUENCES[1])).abs().max() > 0.01


def test_the_same_adapter_on_every_sequence_and_the_fused_stack_stays_off(
    tiny_checkpoint, make_runner, adapters
):
    base, _ = tiny_checkpoint("llama")
    folder, model = adapters["some"]
    runner = make_runner(base, lora_adapters=(f"some={folder}",))
    ours = teacher_forced_logits(runner, SEQUENCES, 7, 4, adapter_ids=["some"] * 3)
    for i, sequence in enumerate(SEQUENCES):
        torch.testing.assert_close(ours[i], reference(model, sequence), atol=ATOL, rtol=0)


# each family's own projection names, as PEFT targets them in its checkpoints
FAMILY_TARGETS = {
    "mistral": ["q_proj", "v_proj", "gate_proj"],
    "qwen2": ["q_proj", "k_proj", "o_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "up_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],  # fused in the checkpoint
    "gemma2": ["q_proj", "o_proj", "up_proj"],
    "starcoder2": ["q_proj", "c_fc", "c_proj"],
    "falcon": ["query_key_value", "dense_4h_to_h"],  # fused q/k/v in the checkpoint
    "falcon_new": ["query_key_value", "dense", "dense_h_to_4h"],  # interleaved groups
    "gpt_bigcode": ["c_attn", "c_proj"],  # fused q/k/v; attention's and the MLP's c_proj
    "gpt_bigcode_mha": ["c_attn", "c_fc"],  # one q/k/v triple per head
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],  # attention only: experts are fused
}


@pytest.mark.parametrize("family", sorted(FAMILY_TARGETS))
def test_every_native_family_takes_adapters_on_its_own_projections(
    tiny_checkpoint, make_runner, tmp_path, family
):
    base, base_model = tiny_checkpoint(family)
    targets = FAMILY_TARGETS[family]
    model = save_tiny_lora_adapter(base, tmp_path / "a", seed=7, r=4, target_modules=targets)
    runner = make_runner(base, lora_adapters=(f"a={tmp_path / 'a'}",))
    sequences = SEQUENCES[:2]
    ours = teacher_forced_logits(runner, sequences, 5, 4, adapter_ids=[None, "a"])
    torch.testing.assert_close(ours[0], reference(base_model, sequences[0]), atol=ATOL, rtol=0)
    torch.testing.assert_close(ours[1], reference(model, sequences[1]), atol=ATOL, rtol=0)


def test_an_adapter_that_is_not_loaded_fails_only_its_request(tiny_checkpoint, make_runner):
    base, _ = tiny_checkpoint("llama")
    runner = make_runner(base)
    answer = runner.prepare(GenerationRequest(1, (1, 2, 3), 4, adapter_id="nope"))
    assert (answer.ready, answer.error) == (
        False,
        "LoRA adapter 'nope' is not loaded (loaded: none)",
    )
    assert runner.prepare(GenerationRequest(2, (1, 2, 3), 4)).ready


def _adapter_files(
    folder: Path, config: dict[str, object], tensors: dict[str, torch.Tensor]
) -> str:
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return f"x={folder}"


PAIR = {
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 64),
    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 2),
}


@pytest.mark.parametrize(
    "case",
    [
        ({"use_dora": True}, PAIR, "LoRA adapter 'x' uses DoRA, which is not supported"),
        (
            {"bias": "all"},
            PAIR,
            "LoRA adapter 'x' trains biases (bias='all'), which is not supported",
        ),
        (
            {},
            {**PAIR, "base_model.model.lm_head.weight": torch.zeros(128, 64)},
            "LoRA adapter 'x' holds 'base_model.model.lm_head.weight', which is not a LoRA A/B "
            "weight of a linear layer",
        ),
        (
            {},
            {k.replace("q_proj", "rotary"): v for k, v in PAIR.items()},
            "LoRA adapter 'x' adapts model.layers.0.self_attn.rotary, which is not a "
            "projection of this LlamaForCausalLM",
        ),
        (
            {},
            {k: v[:, :32].contiguous() if "lora_A" in k else v for k, v in PAIR.items()},
            "LoRA adapter 'x': model.layers.0.self_attn.q_proj maps 32 -> 64 features, "
            "the model's 64 -> 64",
        ),
    ],
)
def test_what_we_do_not_apply_is_refused(tiny_checkpoint, make_runner, tmp_path, case):
    config, tensors, message = case
    base, _ = tiny_checkpoint("llama")
    entry = _adapter_files(tmp_path / "adapter", config, tensors)
    with pytest.raises(ValueError) as raised:
        make_runner(base, lora_adapters=(entry,))
    assert str(raised.value) == message


def test_adapters_on_the_transformers_fallback_are_refused(tiny_checkpoint, make_runner, tmp_path):
    folder, _ = tiny_checkpoint("opt")
    entry = _adapter_files(tmp_path / "adapter", {}, PAIR)
    with pytest.raises(ValueError, match="LoRA adapters need a native model family"):
        make_runner(folder, lora_adapters=(entry,))


def test_a_folder_without_the_adapter_files_is_named(tiny_checkpoint, make_runner, tmp_path):
    base, _ = tiny_checkpoint("llama")
    with pytest.raises(ValueError) as raised:
        make_runner(base, lora_adapters=(f"x={tmp_path}",))
    assert str(raised.value) == (
        f"LoRA adapter 'x': {tmp_path} lacks adapter_config.json, adapter_model.safetensors "
        "(a PEFT adapter saved as safetensors)"
    )
