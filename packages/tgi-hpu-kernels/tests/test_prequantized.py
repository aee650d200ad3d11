"""Pre-quantized GPTQ and AWQ checkpoints (``loader/prequantized.py``): tiny random Llama
checkpoints packed here in each format's own layout load into ``QuantizedLinear`` exactly
(every layer's weight is the format's dequantization, computed here from the packed tensors)
and compute what a dense model with those weights computes; unsupported variants are refused
in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tgi_core.contract import StepPlan
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.layers import LMHead, QuantizedLinear, WeightQuantization
from tgi_hpu_kernels.layers.quantized import dequantize, quantize_rows
from tgi_hpu_kernels.loader import load_model
from tgi_hpu_kernels.loader.prequantized import checkpoint_quantization
from tgi_hpu_kernels.testing import prefill_plan

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ's WQLinear_GEMM.from_linear: nibble i -> output
# our layer -> the checkpoint projections whose rows it stacks, in order
MERGED = {
    "self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "self_attn.o_proj": ("o_proj",),
    "mlp.gate_up_proj": ("gate_proj", "up_proj"),
    "mlp.down_proj": ("down_proj",),
}
PROMPTS = ([5, 17, 33, 9, 41, 7, 3], [88, 12, 64, 101, 23])


def _pack(values: np.ndarray, order: list[int]) -> torch.Tensor:
    """[..., n * 8] 4-bit values -> int32 [..., n]: value order[i] of each eight at bits 4i."""
    eights = values.astype(np.uint32).reshape(*values.shape[:-1], -1, 8)
    words = sum(eights[..., k] << np.uint32(4 * i) for i, k in enumerate(order))
    return torch.from_numpy(np.asarray(words, dtype=np.uint32).view(np.int32))


def _nibble(words: torch.Tensor, rows: np.ndarray, cols: np.ndarray, shift: np.ndarray) -> Any:
    return (words.numpy().view(np.uint32)[rows][:, cols] >> shift.astype(np.uint32)) & 15


def _gptq_reference(parts: dict[str, torch.Tensor], group: int) -> torch.Tensor:
    """AutoGPTQ v1: q[i, o] is nibble i % 8 of qweight[i // 8, o]; w = (q - (z + 1) % 16) * s
    (a stored 15 is a zero point of 0)."""
    inputs, outputs = parts["qweight"].shape[0] * 8, parts["qweight"].shape[1]
    i, o = np.arange(inputs), np.arange(outputs)
    q = _nibble(parts["qweight"], i // 8, o, 4 * (i % 8)[:, None])
    z = _nibble(parts["qzeros"], np.arange(inputs // group), o // 8, 4 * (o % 8)[None, :])
    s = parts["scales"].float().numpy()
    w = (q - (z[i // group] + 1) % 16.0) * s[i // group]
    return torch.from_numpy(np.ascontiguousarray(w.T, dtype=np.float32))


def _awq_reference(parts: dict[str, torch.Tensor], group: int) -> torch.Tensor:
    """AutoAWQ GEMM: output o is nibble AWQ_ORDER.index(o % 8) of word o // 8; w = (q - z) * s."""
    inputs, outputs = parts["qweight"].shape[0], parts["qweight"].shape[1] * 8
    i, o = np.arange(inputs), np.arange(outputs)
    position = np.array([AWQ_ORDER.index(k) for k in range(8)])[o % 8]
    q = _nibble(parts["qweight"], i, o // 8, 4 * position[None, :])
    z = _nibble(parts["qzeros"], np.arange(inputs // group), o // 8, 4 * position[None, :])
    s = parts["scales"].float().numpy()
    w = (q - z[i // group].astype(np.float64)) * s[i // group]
    return torch.from_numpy(np.ascontiguousarray(w.T, dtype=np.float32))


def _random_linear(
    method: str, inputs: int, outputs: int, group: int, *, sym: bool, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """One linear's packed tensors: random codes, zeros and fp16 scales in ``method``'s layout."""
    groups = inputs // group
    codes = rng.integers(0, 16, size=(inputs, outputs))
    zeros = np.full((groups, outputs), 7) if sym else rng.integers(0, 16, size=(groups, outputs))
    scales = torch.from_numpy(rng.uniform(0.002, 0.008, size=(groups, outputs))).half()
    if method == "awq":
        parts = {"qweight": _pack(codes, AWQ_ORDER), "qzeros": _pack(zeros, AWQ_ORDER)}
        unpacked = _awq_reference({**parts, "scales": torch.ones(groups, outputs)}, group)
    else:
        # word [r, o] holds inputs 8r..8r+7 of output o
        per_word = codes.reshape(inputs // 8, 8, outputs).transpose(0, 2, 1)
        qweight = _pack(per_word.reshape(inputs // 8, -1), list(range(8)))
        parts = {"qweight": qweight, "qzeros": _pack(zeros, list(range(8)))}
        parts["g_idx"] = torch.arange(inputs, dtype=torch.int32) // group
        unpacked = _gptq_reference({**parts, "scales": torch.ones(groups, outputs)}, group)
    real_zeros = (zeros + 1) % 16 if method == "gptq" else zeros  # GPTQ v1's offset
    expected = codes.T - np.repeat(real_zeros, group, axis=0).T  # [out, in]
    assert torch.equal(unpacked, torch.from_numpy(expected.astype(np.float32)))  # the packing
    return {**parts, "scales": scales}


def _write_checkpoint(
    base: Path, folder: Path, method: str, group_size: int, *, sym: bool = False
) -> tuple[dict[str, torch.Tensor], Path]:
    """``base``'s tiny checkpoint with every projection replaced by random ``method`` codes, split
    over two shards (the scales in the second); returns the reference dense projections and a
    dense checkpoint holding them."""
    tensors = load_file(str(base / "model.safetensors"))
    hf_config = json.loads((base / "config.json").read_text())
    rng = np.random.default_rng(0)
    first: dict[str, torch.Tensor] = {}
    second: dict[str, torch.Tensor] = {}
    dense = dict(tensors)
    reference: dict[str, torch.Tensor] = {}
    reference_of = _gptq_reference if method == "gptq" else _awq_reference
    for name, weight in tensors.items():
        if not name.endswith("_proj.weight"):
            first[name] = weight
            continue
        prefix = name.removesuffix(".weight")
        outputs, inputs = weight.shape
        group = inputs if group_size == -1 else group_size
        parts = _random_linear(method, inputs, outputs, group, sym=sym, rng=rng)
        reference[prefix] = dense[name] = reference_of(parts, group)
        for part, tensor in parts.items():
            (second if part == "scales" else first)[f"{prefix}.{part}"] = tensor
    quantization = {"quant_method": method, "bits": 4, "group_size": group_size}
    if method == "gptq":
        quantization = {"desc_act": False, "sym": sym, **quantization}
    else:
        quantization = {"zero_point": True, "version": "gemm", **quantization}
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({**hf_config, "quantization_config": quantization})
    )
    save_file(first, str(folder / "model-00001-of-00002.safetensors"))
    save_file(second, str(folder / "model-00002-of-00002.safetensors"))
    dense_folder = folder.with_name(f"{folder.name}-dense")
    dense_folder.mkdir()
    (dense_folder / "config.json").write_text(json.dumps(hf_config))
    save_file(dense, str(dense_folder / "model.safetensors"))
    return reference, dense_folder


def _plan() -> StepPlan:
    return prefill_plan(PROMPTS, blocks_per_sequence=4, batch_size=2, seq_len=8)


def _load(folder: Path, **settings: Any) -> torch.nn.Module:
    values = {"model_id": str(folder), "dtype": "float32", "max_total_tokens": 64, **settings}
    return load_model(
        RunnerSettings(**values), backend=CpuDevice(), device=torch.device("cpu")
    ).model


@pytest.mark.parametrize(
    ("family", "method", "group_size", "sym", "g_idx"),
    [
        ("llama", "gptq", 32, False, True),
        ("llama", "gptq", -1, True, False),  # per channel, and no g_idx (older AutoGPTQ files)
        ("llama", "awq", 32, False, False),
        ("qwen2", "awq", 32, True, False),  # q/k/v biases stay dense next to the codes
    ],
)
def test_checkpoint_loads_exactly_and_matches_its_dense_model(
    tiny_checkpoint, make_runner, tmp_path, *, family, method, group_size, sym, g_idx
):
    base = tiny_checkpoint(family)[0]
    folder = tmp_path / method
    reference, dense_folder = _write_checkpoint(base, folder, method, group_size, sym=sym)
    if not g_idx and method == "gptq":
        for path in folder.glob("*.safetensors"):
            kept = {k: v for k, v in load_file(str(path)).items() if not k.endswith(".g_idx")}
            save_file(kept, str(path))

    quantized = make_runner(folder)
    modules = dict(quantized._model.named_modules())
    assert isinstance(modules["lm_head"], LMHead)  # these formats keep the head dense
    for layer in range(2):
        for merged, sources in MERGED.items():
            module = modules[f"model.layers.{layer}.{merged}"]
            assert isinstance(module, QuantizedLinear)
            assert module.group == (module.in_features if group_size == -1 else group_size)
            parent = f"model.layers.{layer}.{merged.split('.')[0]}"
            expected = torch.cat([reference[f"{parent}.{source}"] for source in sources])
            torch.testing.assert_close(dequantize(module.quantized()), expected, rtol=0, atol=1e-6)

    logits = quantized.compute_logits(_plan(), every_token=True)
    dense = make_runner(dense_folder).compute_logits(_plan(), every_token=True)
    assert (logits - dense).abs().max() <= 1e-3 * dense.abs().max()


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_gaudi_repacks_the_checkpoint_into_uint4_words(
    tiny_checkpoint, make_runner, tmp_path, method
):
    folder = tmp_path / method
    reference, dense_folder = _write_checkpoint(tiny_checkpoint("llama")[0], folder, method, 32)
    gaudi = make_runner(folder, gaudi_layout=True)
    modules = dict(gaudi._model.named_modules())
    for layer in range(2):
        for merged, sources in MERGED.items():
            module = modules[f"model.layers.{layer}.{merged}"]
            assert module.codes.numel() == 0 and module.uint4_qweight is not None
            parent = f"model.layers.{layer}.{merged.split('.')[0]}"
            expected = torch.cat([reference[f"{parent}.{source}"] for source in sources])
            # the same integer codes and zero points; the scales rounded to bf16 (INC's)
            error = (dequantize(module.quantized()) - expected).abs().max()
            assert error <= 2**-8 * expected.abs().max()
    logits = gaudi.compute_logits(_plan(), every_token=True)
    dense = make_runner(dense_folder).compute_logits(_plan(), every_token=True)
    assert (logits - dense).abs().max() <= 1e-2 * dense.abs().max()


@pytest.mark.parametrize(
    ("method", "config", "match"),
    [
        ("gptq", {"desc_act": True}, r"act-order \(desc_act\) is not supported"),
        ("gptq", {"group_size": 48}, r"group_size 48 is not supported \(a multiple of 32"),
        ("gptq", {"bits": 8}, r"8-bit weights are not supported \(4-bit only\)"),
        ("gptq", {"checkpoint_format": "gptq_v2"}, r"checkpoint_format 'gptq_v2' is not"),
        ("awq", {"version": "gemv"}, r"version 'gemv' is not supported \(gemm only\)"),
    ],
)
def test_unsupported_variants_are_refused_in_one_line(
    tiny_checkpoint, tmp_path, method, config, match
):
    folder = tmp_path / method
    _write_checkpoint(tiny_checkpoint("llama")[0], folder, method, 32)
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    raw["quantization_config"].update(config)
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=f"^{method} checkpoint: {match}") as err:
        _load(folder)
    assert "\n" not in str(err.value)


def test_act_order_g_idx_is_refused_even_when_the_config_does_not_say_so(tiny_checkpoint, tmp_path):
    folder = tmp_path / "gptq"
    _write_checkpoint(tiny_checkpoint("llama")[0], folder, "gptq", 32)
    path = folder / "model-00001-of-00002.safetensors"
    tensors = load_file(str(path))
    name = "model.layers.1.mlp.down_proj.g_idx"
    tensors[name] = tensors[name].flip(0).contiguous()  # desc_act's permuted groups
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=rf"^gptq checkpoint: {name} is act-order") as err:
        _load(folder)
    assert "\n" not in str(err.value)


def test_quantize_must_match_the_checkpoint(tiny_checkpoint, tmp_path):
    base = tiny_checkpoint("llama")[0]
    folder = tmp_path / "awq"
    _write_checkpoint(base, folder, "awq", 32)
    with pytest.raises(ValueError, match=r"^--quantize gptq does not match the checkpoint's awq"):
        _load(folder, quantize="gptq")
    with pytest.raises(ValueError, match=r"^--quantize awq needs a checkpoint that declares it"):
        _load(base, quantize="awq")
    modules = dict(_load(folder, quantize="awq").named_modules())
    assert isinstance(modules["model.layers.0.mlp.down_proj"], QuantizedLinear)


def test_sharding_a_prequantized_checkpoint_is_refused():
    config = {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}
    assert checkpoint_quantization(config, None, 1) == config["quantization_config"]
    assert (
        checkpoint_quantization({"quantization_config": {"quant_method": "fp8"}}, None, 2) is None
    )
    with pytest.raises(
        ValueError, match=r"^--num-shard > 1 with a pre-quantized gptq checkpoint is not supported"
    ):
        checkpoint_quantization(config, None, 2)


def test_load_packed_copies_rows_as_load_rows_would_quantize_them():
    dense = torch.randn(24, 64)
    expected = QuantizedLinear(64, 24, WeightQuantization(4, 32))
    expected.load_rows(0, dense)
    layer = QuantizedLinear(64, 24, WeightQuantization(4, 32))
    layer.load_packed(0, *quantize_rows(dense[:8], 4, 32))
    layer.load_packed(8, *quantize_rows(dense[8:], 4, 32))
    for name in ("codes", "scales", "mins"):
        assert torch.equal(getattr(layer, name), getattr(expected, name))

    codes, scales, mins = quantize_rows(dense[:8, :32], 4, 32)
    with pytest.raises(
        ValueError, match=r"^int4 \(group 32\) rows need torch.uint8 codes \[n, 32\]"
    ):
        layer.load_packed(0, codes, scales, mins)
    with pytest.raises(ValueError, match=r"^rows \[20, 28\) exceed 24 outputs$"):
        layer.load_packed(20, *quantize_rows(dense[:8], 4, 32))
