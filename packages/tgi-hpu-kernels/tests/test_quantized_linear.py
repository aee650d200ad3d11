"""Weight-only int8/int4 linears: the native kernels (AVX-512 here, AVX2 from a -march=haswell
build) against ``x @ dequantize(w).T``, quantize/dequantize round trips, ``--quantize`` on a
tiny Llama (dense head, logits close to the dense model's, sharded like unsharded), and a
Q4_1/Q8_0 GGUF served quantized giving the logits of its dequantized self. Biases come in
the activations' dtype, bf16 included, as the models pass them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import gguf
import pytest
import torch
from torch import Tensor

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
)
from tgi_hpu_kernels.device.cpu import (
    QUANTIZED_AMX_MIN_ROWS,
    QUANTIZED_BF16_GEMM_MIN_ROWS,
    QUANTIZED_NATIVE_MAX_ROWS,
    CpuDevice,
)
from tgi_hpu_kernels.device.cpu_native import NativeKernels, native_kernels
from tgi_hpu_kernels.device.native_build import build_library, find_compiler, load_library
from tgi_hpu_kernels.layers import LMHead, QuantizedLinear, QuantizedLMHead, WeightQuantization
from tgi_hpu_kernels.layers.quantized import QuantizedWeight, dequantize, quantize_rows
from tgi_hpu_kernels.models.llama import LlamaModel
from tgi_hpu_kernels.runner import TorchModelRunner
from tgi_hpu_kernels.testing import save_tiny_checkpoint, teacher_forced_logits

ROWS = (1, 3, 16, 33, 64, 200)  # both sides of QUANTIZED_NATIVE_MAX_ROWS
SCHEMES = [
    WeightQuantization(8),
    WeightQuantization(8, 32),
    WeightQuantization(8, 64),
    WeightQuantization(4, 32),
    WeightQuantization(4, 64),
    WeightQuantization(4, 128),
]
REL = 1e-3
PROJECTIONS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
LinearFn = Callable[[Tensor, QuantizedWeight, Tensor | None], Tensor]
MakeRunner = Callable[..., TorchModelRunner]
ShardedRunner = Callable[..., AbstractContextManager[tuple[TorchModelRunner, list[int]]]]
TinyCheckpoint = Callable[[str], tuple[Path, torch.nn.Module]]

needs_compiler = pytest.mark.skipif(find_compiler() is None, reason="no C compiler")


def _random_layer(
    scheme: WeightQuantization, gen: torch.Generator, remainder: int = 0
) -> QuantizedLinear:
    """Random sizes: ``remainder`` outputs past a multiple of 4 (the kernels' row blocks),
    inputs a multiple of the group."""
    unit = scheme.group or 32
    inputs = unit * int(torch.randint(1, 512 // unit + 1, (), generator=gen))
    outputs = 4 * int(torch.randint(1, 38, (), generator=gen)) + remainder
    layer = QuantizedLinear(inputs, outputs, scheme)
    layer.load_rows(0, torch.randn(outputs, inputs, generator=gen))
    return layer


def _check_fidelity(
    linear: LinearFn,
    scheme: WeightQuantization,
    dtype: torch.dtype,
    bias: bool,
    seed: int,
    *,
    rounds_weights: Callable[[Tensor], bool] = lambda x: False,
) -> None:
    """``rounds_weights(x)``: the device dequantizes the weights to ``x``'s dtype for a GEMM
    (bf16 prefill with AMX): the reference is then the matmul on those weights, the dense
    bf16 model's (and TGI-Gaudi's); else on the float32 weights."""
    gen = torch.Generator().manual_seed(seed)
    for i, rows in enumerate(ROWS):
        layer = _random_layer(scheme, gen, remainder=i % 4)
        weight = layer.quantized()
        x = torch.randn(rows, weight.in_features, generator=gen).to(dtype)
        b = torch.randn(weight.out_features, generator=gen).to(dtype) if bias else None
        dense = dequantize(weight)
        if rounds_weights(x):
            dense = dense.to(dtype).float()
        expected = x.float() @ dense.T + (0 if b is None else b.float())
        out = linear(x, weight, b)
        assert out.dtype == dtype and out.shape == expected.shape
        # bf16 outputs are rounded to bf16 (half an ulp: up to 2^-8 relative) on top of REL.
        error = (out.float() - expected).abs() - (0 if dtype == torch.float32 else 2**-8) * (
            expected.abs()
        )
        relative = float(error.max() / expected.abs().max())
        assert relative <= REL, f"{scheme}, {rows} rows of {tuple(x.shape)}: {relative:.3g}"


def test_the_row_counts_cover_both_cpu_paths() -> None:
    assert min(ROWS) <= QUANTIZED_NATIVE_MAX_ROWS < max(ROWS)
    assert sum(map(len, TOKENS)) > QUANTIZED_NATIVE_MAX_ROWS  # the model tests' prefill


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_cpu_device_matches_dequantized_matmul(
    scheme: WeightQuantization, dtype: torch.dtype, bias: bool
) -> None:
    device = CpuDevice()
    if device._native is None:
        pytest.skip("no native kernels")

    def rounds_weights(x: Tensor) -> bool:
        return device.quantized_amx(x) and x.shape[0] >= QUANTIZED_BF16_GEMM_MIN_ROWS

    seed = SCHEMES.index(scheme)
    _check_fidelity(
        device.quantized_linear, scheme, dtype, bias, seed, rounds_weights=rounds_weights
    )


@pytest.fixture(scope="module")
def avx2_kernels(tmp_path_factory: pytest.TempPathFactory) -> NativeKernels:
    """The library built for Haswell (the last -march wins): the AVX2+FMA path."""
    compiler = find_compiler()
    assert compiler is not None
    folder = tmp_path_factory.mktemp("avx2")
    path = build_library(compiler, extra_flags=("-march=haswell",), folder=folder)
    return NativeKernels(load_library(path), path)


@needs_compiler
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_avx2_kernels_match_dequantized_matmul(
    avx2_kernels: NativeKernels, scheme: WeightQuantization, bias: bool
) -> None:
    assert not avx2_kernels.fast_bf16  # Haswell has no AVX512-BF16: a different build
    _check_fidelity(avx2_kernels.quantized_linear, scheme, torch.float32, bias, seed=7)
    layer = _random_layer(scheme, torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        avx2_kernels.dequantize(layer.quantized()), dequantize(layer.quantized())
    )


@needs_compiler
@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_amx_kernels_round_the_float64_product_once_for_bf16_rows(
    scheme: WeightQuantization,
) -> None:
    """With AMX, bf16 rows from QUANTIZED_AMX_MIN_ROWS up to QUANTIZED_BF16_GEMM_MIN_ROWS
    multiply the codes on the tiles: the float64 product rounded once to bf16 (float32
    sums), each row's bits independent of the batch. Without AMX, bf16 rows stay on the
    float32 kernels."""
    native, device = native_kernels(), CpuDevice()
    assert native is not None
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(QUANTIZED_AMX_MIN_ROWS, 64, dtype=torch.bfloat16)
    amx_text = f"int4/int8 on AMX tiles from {QUANTIZED_AMX_MIN_ROWS} rows"
    assert (amx_text in device.kernels) == native.amx
    if not native.amx:
        assert not device.quantized_amx(x)
        with pytest.raises(ValueError, match="AMX"):
            native.quantized_linear(x, _random_layer(scheme, gen).quantized(), None)
        return
    assert device.quantized_amx(x) and not device.quantized_amx(x[:-1])
    assert not device.quantized_amx(x.float())
    for rows in (QUANTIZED_AMX_MIN_ROWS, 16, 33, QUANTIZED_BF16_GEMM_MIN_ROWS - 1, 300):
        weight = _random_layer(scheme, gen, remainder=rows % 4).quantized()  # partial tiles
        x = torch.randn(rows, weight.in_features, generator=gen).to(torch.bfloat16)
        bias = torch.randn(weight.out_features, generator=gen)
        expected = x.double() @ dequantize(weight).double().T + bias.double()
        out = native.quantized_linear(x, weight, bias)  # 300: two chunks of x
        assert out.dtype == torch.bfloat16
        # Half a bf16 ulp (at most 2^-9 relative, 2^-8 with margin) and float32 sums' error.
        error = (out.double() - expected).abs() - 2**-8 * expected.abs()
        relative = float(error.max() / expected.abs().max())
        assert relative < 1e-5, f"{scheme}, {rows} rows: {relative:.3g}"
        rounded = expected.to(torch.bfloat16)  # a float32 sum can only flip a near-tie
        assert float((out != rounded).float().mean()) < 0.01
        first = native.quantized_linear(x[:QUANTIZED_AMX_MIN_ROWS], weight, bias)
        assert torch.equal(first, out[:QUANTIZED_AMX_MIN_ROWS])
        if rows < QUANTIZED_BF16_GEMM_MIN_ROWS:
            with torch.profiler.profile() as profile:
                device.quantized_linear(x, weight, bias)
            assert f"native::linear_q{weight.bits}_amx" in {e.key for e in profile.key_averages()}


@needs_compiler
@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_prefill_sized_bf16_rows_multiply_the_weights_rounded_to_bf16(
    scheme: WeightQuantization, avx2_kernels: NativeKernels
) -> None:
    """With AMX, bf16 rows from QUANTIZED_BF16_GEMM_MIN_ROWS on: the weights dequantized to
    bf16 (rounded as ``.to(torch.bfloat16)`` rounds them: what the dense bf16 model holds)
    for oneDNN's GEMM, so each weight is within 2^-9 of its value. The bf16 dequantization
    itself is checked on every build, the AVX-512 one and the portable one."""
    native, device = native_kernels(), CpuDevice()
    assert native is not None
    gen = torch.Generator().manual_seed(13)
    for kernels in (native, avx2_kernels):
        weight = _random_layer(scheme, gen, remainder=1).quantized()
        wide = kernels.dequantize(weight)
        assert torch.equal(kernels.dequantize(weight, torch.bfloat16), wide.to(torch.bfloat16))
    with pytest.raises(ValueError, match=r"float32 or bf16, not torch\.float16"):
        native.dequantize(weight, torch.float16)
    for rows in (QUANTIZED_BF16_GEMM_MIN_ROWS, 333):
        weight = _random_layer(scheme, gen, remainder=rows % 4).quantized()
        x = torch.randn(rows, weight.in_features, generator=gen).to(torch.bfloat16)
        bias = torch.randn(weight.out_features, generator=gen).to(torch.bfloat16)
        with torch.profiler.profile() as profile:
            out = device.quantized_linear(x, weight, bias)
        dequantized = f"native::dequantize_q{weight.bits}_bf16" in {
            e.key for e in profile.key_averages()
        }
        assert dequantized == native.amx
        if not native.amx:
            continue
        assert out.dtype == torch.bfloat16
        dense = dequantize(weight).double()
        expected = x.double() @ dense.T + bias.double()
        # each weight rounded to bf16 (2^-9 relative), float32 sums, the output rounded once
        bound = 2**-9 * (x.double().abs() @ dense.abs().T) + 2**-8 * expected.abs() + 1e-4
        assert bool(((out.double() - expected).abs() <= bound).all()), f"{scheme}, {rows} rows"


def _round_trip(w: Tensor, bits: int, group: int) -> tuple[Tensor, Tensor]:
    codes, scales, mins = quantize_rows(w, bits, group)
    rows, inputs = w.shape
    weight = QuantizedWeight(bits, group, inputs, rows, codes, scales, mins)
    return dequantize(weight), scales


@pytest.mark.parametrize("bits,group", [(8, 32), (8, 256), (4, 32), (4, 128)])
def test_reconstruction_error_is_at_most_half_a_step(bits: int, group: int) -> None:
    w = torch.randn(24, 256, generator=torch.Generator().manual_seed(bits + group)) * 3
    restored, scales = _round_trip(w, bits, group)
    step = scales.repeat_interleave(group, dim=1)
    # Half a step, plus float32 rounding of the scale arithmetic.
    assert ((restored - w).abs() <= step / 2 * (1 + 1e-5) + 1e-7).all()


@pytest.mark.parametrize("bits", [8, 4])
def test_zero_and_constant_rows_come_back_exactly(bits: int) -> None:
    w = torch.zeros(4, 64)
    w[1], w[2], w[3] = 0.37, -2.5, 1e-30
    restored, _ = _round_trip(w, bits, 32)
    assert torch.isfinite(restored).all()
    assert torch.equal(restored[0], w[0])
    if bits == 4:  # w = 0 * 0 + min
        assert torch.equal(restored, w)
    else:  # (w / 127) * 127: exact to float32 rounding
        torch.testing.assert_close(restored, w, rtol=2**-23, atol=0)


def test_a_q4_1_grid_round_trips() -> None:
    gen = torch.Generator().manual_seed(5)
    q = torch.randint(0, 16, (16, 8, 32), generator=gen)
    q[:, :, 0], q[:, :, 1] = 0, 15  # each group spans the whole grid
    d = torch.rand(16, 8, 1, generator=gen) / 5 + 0.01  # |w| < 5: float32 steps < 1e-6
    m = torch.randn(16, 8, 1, generator=gen) / 2
    w = (q * d + m).reshape(16, 256)
    restored, _ = _round_trip(w, 4, 32)
    torch.testing.assert_close(restored, w, rtol=0, atol=1e-6)
    codes, _, _ = quantize_rows(w, 4, 32)  # llama.cpp's layout: byte j holds j and j + 16
    assert torch.equal(codes.reshape(16, 8, 16) & 0x0F, q[:, :, :16].to(torch.uint8))
    assert torch.equal(codes.reshape(16, 8, 16) >> 4, q[:, :, 16:].to(torch.uint8))


# -- model level ---------------------------------------------------------------------------

TOKENS = ([(7 * i + 5) % 120 + 3 for i in range(30)], [8, 2, 55, 19, 23, 90, 64, 12, 77])
TABLES = [tuple(range(9)), (9, 10, 11)]
NUM_DECODE = 3


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose MLP (128, 64 per shard of 2) fits int4 groups of 64."""
    folder = tmp_path_factory.mktemp("tiny-llama-q")
    save_tiny_checkpoint(folder, "llama", intermediate_size=128)
    return folder


def _prefill(base: int, released: tuple[int, ...] = ()) -> StepPlan:
    """A 39-token prefill (the dequantize + GEMM path); decode steps take the native kernel."""
    items = tuple(
        PrefillItem(
            request_id=base + i,
            token_ids=tuple(t),
            num_prompt_tokens=len(t),
            num_cached_tokens=0,
            block_table=table,
            sampling=SamplingParams(),
        )
        for i, (t, table) in enumerate(zip(TOKENS, TABLES, strict=True))
    )
    return StepPlan(step_id=0, shape=PrefillShape(2, 32), prefill=items, released=released)


def _decode(base: int, tokens: list[int], step: int) -> StepPlan:
    items = tuple(
        DecodeItem(request_id=base + i, token_id=tok, position=len(t) + step, block_table=table)
        for i, (t, table, tok) in enumerate(zip(TOKENS, TABLES, tokens, strict=True))
    )
    return StepPlan(step_id=step + 1, shape=DecodeShape(2, 8), decode=items)


def _logits(runner: TorchModelRunner) -> Tensor:
    """Teacher-forced: the prefill's logits, then those of each decode step."""
    rows = [runner.compute_logits(_prefill(0))]
    rows += [runner.compute_logits(_decode(0, [7 + step] * 2, step)) for step in range(NUM_DECODE)]
    return torch.cat(rows)


def _greedy(runner: TorchModelRunner) -> list[list[int]]:
    out = runner.execute(_prefill(10, released=(0, 1)))
    tokens = [[o.token_id for o in out.outputs]]
    for step in range(NUM_DECODE):
        out = runner.execute(_decode(10, tokens[-1], step))
        tokens.append([o.token_id for o in out.outputs])
    return tokens


def _cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


def _modules(runner: TorchModelRunner) -> dict[str, torch.nn.Module]:
    return dict(runner._model.named_modules())


@pytest.mark.parametrize(
    "method,scheme,min_cosine",
    [
        ("bitsandbytes", WeightQuantization(8), 0.99),
        ("bitsandbytes-nf4", WeightQuantization(4, 64), 0.95),
    ],
)
def test_quantize_serves_quantized_projections(
    tiny_llama: Path,
    make_runner: MakeRunner,
    method: str,
    scheme: WeightQuantization,
    min_cosine: float,
) -> None:
    dense = _logits(make_runner(tiny_llama))
    runner = make_runner(tiny_llama, quantize=method)
    modules = _modules(runner)
    for layer in range(2):
        for name in PROJECTIONS:
            module = modules[f"model.layers.{layer}.{name}"]
            assert type(module) is QuantizedLinear and module.scheme == scheme, name
    assert type(modules["lm_head"]) is LMHead
    assert runner.weights == f"{scheme} projections, dense LM head (--quantize {method})"
    assert _cosine(_logits(runner), dense) > min_cosine


def test_gaudi_serves_nf4_as_integer_zero_point_uint4_words(
    tiny_llama: Path, make_runner: MakeRunner
) -> None:
    dense = _logits(make_runner(tiny_llama))
    runner = make_runner(tiny_llama, quantize="bitsandbytes-nf4", gaudi_layout=True)
    scheme = WeightQuantization(4, 64, integer_zeros=True)
    for layer in range(2):
        for name in PROJECTIONS:
            module = _modules(runner)[f"model.layers.{layer}.{name}"]
            assert type(module) is QuantizedLinear and module.scheme == scheme, name
            assert module.codes.numel() == 0 and module.uint4_qweight is not None, name
    assert runner.weights == f"{scheme} projections, dense LM head (--quantize bitsandbytes-nf4)"
    assert _cosine(_logits(runner), dense) > 0.95
    with pytest.raises(ValueError, match=r"^--quantize bitsandbytes: no weight-only int8 kernels"):
        make_runner(tiny_llama, quantize="bitsandbytes", gaudi_layout=True)


def test_quantize_refuses_inputs_that_do_not_fill_the_groups(
    tiny_checkpoint: TinyCheckpoint, make_runner: MakeRunner
) -> None:
    folder, _ = tiny_checkpoint("llama")  # intermediate_size 96: not a multiple of 64
    with pytest.raises(ValueError, match=r"^--quantize bitsandbytes-nf4: model\.layers\.0\.mlp"):
        make_runner(folder, quantize="bitsandbytes-nf4")


def test_a_quantized_layer_refuses_a_checkpoint_part_of_the_wrong_size(
    tiny_llama: Path, make_runner: MakeRunner
) -> None:
    # Dense parameters refuse a wrong shape; quantized ones must too, not fill some rows.
    model = make_runner(tiny_llama, quantize="bitsandbytes")._model  # the loaded layers
    inputs = model.config.hidden_size
    for name, rows in (("o_proj", 3), ("k_proj", model.config.head_dim)):
        with pytest.raises(ValueError, match=rf"has {rows} rows, expected \d+$"):
            model.load_weights(
                [(f"model.layers.0.self_attn.{name}.weight", torch.ones(rows, inputs))]
            )


def test_bfloat16_biases_give_the_torch_op_logits(
    tiny_checkpoint: TinyCheckpoint, make_runner: MakeRunner
) -> None:
    """Qwen2's q/k/v biases, bf16 like the model: the native kernels' path against torch's
    dequantize + matmul."""
    folder, _ = tiny_checkpoint("qwen2")
    native, torch_ops = (
        make_runner(folder, native=use, dtype="bfloat16", quantize="bitsandbytes")
        for use in (True, False)
    )
    assert _cosine(_logits(native), _logits(torch_ops)) > 0.999


@pytest.mark.slow  # a second process, as in test_parallel.py (about 10 s)
def test_two_quantized_shards_pick_the_unsharded_tokens(
    tiny_llama: Path, make_runner: MakeRunner, sharded_runner: ShardedRunner
) -> None:
    single = make_runner(tiny_llama, quantize="bitsandbytes")
    expected_logits, expected_tokens = _logits(single), _greedy(single)
    with sharded_runner(tiny_llama, quantize="bitsandbytes") as (sharded, _):
        down = _modules(sharded)["model.layers.0.mlp.down_proj"]
        assert type(down) is QuantizedLinear and down.in_features == 64  # half of 128
        # Not bit for bit: each rank's o_proj/down_proj rows get their own per-channel scale.
        assert _cosine(_logits(sharded), expected_logits) > 0.999
        assert _greedy(sharded) == expected_tokens


_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _write_quantized_gguf(
    path: Path, model: torch.nn.Module, arch: str = "llama", *, dense: bool = False
) -> None:
    """Projections in Q4_1, the (tied) embedding in Q8_0, norms and biases in F32 (``dense``:
    all F32); Q/K rows are left unpermuted: both loads below read the same file the same way."""
    config: Any = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)
    for name, tensor in model.state_dict().items():
        data = tensor.float().numpy()
        if name == "model.embed_tokens.weight":
            qtype, gguf_name = gguf.GGMLQuantizationType.Q8_0, "token_embd.weight"
            qtype = gguf.GGMLQuantizationType.F32 if dense else qtype
        elif name == "model.norm.weight":
            qtype, gguf_name = gguf.GGMLQuantizationType.F32, "output_norm.weight"
        elif name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            quantized = "norm" not in module and kind == "weight" and not dense
            qtype = gguf.GGMLQuantizationType.Q4_1 if quantized else gguf.GGMLQuantizationType.F32
            gguf_name = f"blk.{layer}.{_GGUF_NAMES[module]}.{kind}"
        else:
            continue  # lm_head: tied, stored by llama.cpp as nothing
        writer.add_tensor(gguf_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@needs_compiler  # the CPU serves a GGUF quantized with its native kernels only
def test_a_q4_1_gguf_keeps_its_precision_and_its_logits(
    tiny_checkpoint: TinyCheckpoint, make_runner: MakeRunner, tmp_path: Path
) -> None:
    path = tmp_path / "tiny-q4_1.gguf"
    _write_quantized_gguf(path, tiny_checkpoint("llama")[1])
    quantized = make_runner(path)  # float32 on this CPU: served quantized
    dense = make_runner(path, gguf_weights="dense")
    assert dense.weights == "dense" and quantized.weights.endswith(
        "(GGUF Q4_1 projections, Q8_0 head)"
    )
    assert not any(isinstance(m, QuantizedLinear) for m in dense._model.modules())
    modules = _modules(quantized)
    for name in PROJECTIONS:
        module = modules[f"model.layers.1.{name}"]
        assert type(module) is QuantizedLinear and module.scheme == WeightQuantization(4, 32)
    head = modules["lm_head"]
    assert type(head) is QuantizedLMHead and head.scheme == WeightQuantization(8, 32)
    expected, logits = _logits(dense), _logits(quantized)
    relative = float((logits - expected).abs().max() / expected.abs().max())
    assert relative < 1e-4


@needs_compiler
def test_gguf_weights_overrides_the_devices_choice_and_refuses_where_there_is_none(
    tiny_checkpoint: TinyCheckpoint, make_runner: MakeRunner, tmp_path: Path
) -> None:
    """``auto`` keeps the codes unless bf16 is native without AMX (there the dense bf16
    kernels win), ``--gguf-weights quantized`` keeps them whatever the device would do,
    ``dense`` dequantizes where it would keep them (float32); a checkpoint with nothing to
    choose is refused in one line."""
    folder, model = tiny_checkpoint("llama")
    path = tmp_path / "tiny-q4_1.gguf"
    _write_quantized_gguf(path, model)
    auto = make_runner(path, dtype="bfloat16")
    native = cast(CpuDevice, auto.device).native
    keeps = native is not None and (not native.fast_bf16 or native.amx)
    assert (type(_modules(auto)["model.layers.0.mlp.down_proj"]) is QuantizedLinear) == keeps
    kept = make_runner(path, dtype="bfloat16", gguf_weights="quantized")
    assert kept.weights.endswith("(GGUF Q4_1 projections, Q8_0 head)")
    assert type(_modules(kept)["model.layers.0.mlp.down_proj"]) is QuantizedLinear
    assert make_runner(path, gguf_weights="dense").weights == "dense"  # float32: auto keeps
    with pytest.raises(ValueError, match=r"--gguf-weights dense: .* is not a GGUF checkpoint$"):
        make_runner(folder, gguf_weights="dense")
    dense_file = tmp_path / "tiny-f32.gguf"
    _write_quantized_gguf(dense_file, model, dense=True)
    with pytest.raises(ValueError, match=r"tiny-f32.gguf holds no quantized projections or head$"):
        make_runner(dense_file, gguf_weights="quantized")


def _bf16_runner(make_runner: MakeRunner, model_id: Path, **settings: object) -> TorchModelRunner:
    runner = make_runner(model_id, dtype="bfloat16", **settings)
    native = cast(CpuDevice, runner.device).native
    if native is None or not native.fast_bf16:
        pytest.skip("the fused decoder stack needs the AVX512-BF16 native kernels")
    return runner


@pytest.fixture(scope="module")
def q4_1_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 (q/k/v biases) as a Q4_1 GGUF: int4 group 32 projections, Q8_0 head."""
    folder = tmp_path_factory.mktemp("tiny-qwen2-q4_1")
    path = folder / "tiny-qwen2-q4_1.gguf"
    _write_quantized_gguf(path, save_tiny_checkpoint(folder / "hf", "qwen2"), "qwen2")
    return path


@needs_compiler
@pytest.mark.parametrize("batch", [1, 5, QUANTIZED_AMX_MIN_ROWS + 1])
@pytest.mark.parametrize("bits", [4, 8])
def test_bfloat16_fused_stack_gives_the_per_op_bits_on_quantized_weights(
    q4_1_qwen2: Path,
    tiny_checkpoint: TinyCheckpoint,
    make_runner: MakeRunner,
    bits: int,
    batch: int,
) -> None:
    """bf16 steps of Qwen2 layers (q/k/v biases) with int4 group 32 codes (a Q4_1 GGUF) or
    int8 per channel (``--quantize bitsandbytes``): one native call per layer, never the
    per-op quantized kernel, and the bits of the kernels called one by one (on AMX the tile
    kernel's from QUANTIZED_AMX_MIN_ROWS rows, which prefill calls too)."""
    model_id, weights = (
        (q4_1_qwen2, {"gguf_weights": "quantized"})  # without AMX bf16 would dequantize it
        if bits == 4
        else (tiny_checkpoint("qwen2")[0], {"quantize": "bitsandbytes"})
    )
    gen = torch.Generator().manual_seed(batch)
    sequences = torch.randint(3, 128, (batch, 16), generator=gen).tolist()
    results, calls = [], []
    for fused in (True, False):
        runner = _bf16_runner(make_runner, model_id, fused=fused, **weights)
        assert runner.weights.startswith(f"int{bits} ")
        amx = cast(CpuDevice, runner.device).quantized_amx(torch.empty(batch, 1).bfloat16())
        kernel = f"native::linear_q{bits}_{'amx' if amx else 'f32'}"
        with torch.profiler.profile() as profile:
            results.append(teacher_forced_logits(runner, sequences, 8, block_size=4))
        ran = {event.key: event.count for event in profile.key_averages()}
        assert ("native::decoder_layer" in ran) == fused
        calls.append(ran.get(kernel, 0))
    assert calls[0] < calls[1]  # the fused steps' projections are not per-op calls
    assert torch.equal(results[0], results[1])


def test_a_stack_mixing_dense_and_quantized_projections_is_not_fused(
    tiny_checkpoint: TinyCheckpoint, make_runner: MakeRunner
) -> None:
    runner = _bf16_runner(make_runner, tiny_checkpoint("qwen2")[0], quantize="bitsandbytes")
    stack = cast(CpuDevice, runner.device)._fused
    assert stack is not None
    specs = cast(LlamaModel, runner._model.model)._layer_specs()
    hidden = torch.zeros(1, specs[0].input_norm.shape[0], dtype=torch.bfloat16)
    assert stack.layout(specs, hidden) == "quantized"
    width = specs[0].num_heads * specs[0].head_dim
    dense_o = torch.zeros(hidden.shape[1], width, dtype=torch.bfloat16)
    mixed = [replace(specs[0], o_weight=dense_o), *specs[1:]]
    assert stack.layout(mixed, hidden) is None
