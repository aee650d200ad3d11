"""Gaudi's int4 layout (``layers/uint4_words.py``) and the integer-zero-point quantization it
needs: words packed as ``convert_from_uint4`` reads them (INC's ``HPUWeightOnlyLinear.pack``,
TGI-Gaudi's GPTQ/AWQ layers), the same weights as the codes they come from, refusals of what
does not fit, and a quantized layer that computes the same after ``repack``."""

from __future__ import annotations

import pytest
import torch

from tgi_hpu_kernels.device.hpu import HpuDevice, hpu_available
from tgi_hpu_kernels.layers import QuantizedLinear, WeightQuantization
from tgi_hpu_kernels.layers.quantized import (
    QuantizedWeight,
    dequantize,
    quantize_rows,
    to_uint4_words,
)
from tgi_hpu_kernels.layers.uint4_words import dequantize_words, pack_nibbles, unpack_nibbles
from tgi_hpu_kernels.loader.quantize import repack_layers

from .conftest import GaudiLayoutCpu


def _weight(w: torch.Tensor, group: int, *, integer_zeros: bool) -> QuantizedWeight:
    rows, inputs = w.shape
    codes, scales, mins = quantize_rows(w, 4, group, integer_zeros=integer_zeros)
    return QuantizedWeight(4, group, inputs, rows, codes, scales, mins)


def test_word_c_holds_values_8c_to_8c_plus_7_lowest_bits_first() -> None:
    values = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 7, 8]], dtype=torch.uint8)
    words = pack_nibbles(values)
    assert words.dtype == torch.int32
    # 0x76543210, and 0x87654321 read as a signed int32
    assert words.tolist() == [[0x76543210, 0x87654321 - 2**32]]
    assert torch.equal(unpack_nibbles(words).flatten(1), values)
    every = torch.randint(0, 16, (5, 64), generator=torch.Generator().manual_seed(0))
    unpacked = unpack_nibbles(pack_nibbles(every.to(torch.uint8)))
    assert unpacked.shape == (5, 8, 8) and torch.equal(unpacked.flatten(1), every.to(torch.uint8))


@pytest.mark.parametrize("group", [32, 64, 128])
def test_integer_zero_points_round_each_weight_to_its_nearest_step(group: int) -> None:
    gen = torch.Generator().manual_seed(group)
    w = torch.randn(24, 256, generator=gen)
    w[3] = w[3].abs() + 0.5  # a row above zero: its grid still reaches zero
    weight = _weight(w, group, integer_zeros=True)
    assert weight.mins is not None
    zeros = -weight.mins / weight.scales
    assert (zeros - zeros.round()).abs().max() < 1e-4
    assert zeros.round().min() >= 0 and zeros.round().max() <= 15
    error = (dequantize(weight) - w).abs().reshape(24, -1, group)
    assert bool((error <= weight.scales[..., None] / 2 * (1 + 1e-5)).all())
    scheme = WeightQuantization(4, group, integer_zeros=True)
    assert str(scheme) == f"int4 (group {group}, integer zero points)"


@pytest.mark.parametrize("group", [32, 128])
def test_the_words_hold_the_codes_weights(group: int) -> None:
    gen = torch.Generator().manual_seed(7)
    weight = _weight(torch.randn(40, 256, generator=gen), group, integer_zeros=True)
    exact = to_uint4_words(weight, torch.float32)
    assert exact.qweight.shape == (256, 5) and exact.qzeros.shape == (256 // group, 5)
    assert exact.scales.shape == (256 // group, 40) and exact.group == group
    reference = dequantize(weight)
    torch.testing.assert_close(dequantize_words(exact), reference, rtol=0, atol=1e-6)
    # Gaudi's scales are bf16 (INC's): each weight moves by at most its bf16 scale's rounding
    words = to_uint4_words(weight, torch.bfloat16)
    assert words.scales.dtype == torch.bfloat16
    bound = 15 * weight.scales.abs().repeat_interleave(group, dim=1) * 2**-8
    assert bool(((dequantize_words(words) - reference).abs() <= bound + 1e-7).all())


def test_what_the_words_cannot_hold_is_refused() -> None:
    gen = torch.Generator().manual_seed(3)
    q4_1 = _weight(torch.randn(16, 64, generator=gen), 32, integer_zeros=False)
    with pytest.raises(ValueError, match=r"^int4 groups need integer zero points \(0..15\)"):
        to_uint4_words(q4_1, torch.bfloat16)
    codes, scales, _ = quantize_rows(torch.randn(16, 64, generator=gen), 8, 64)
    int8 = QuantizedWeight(8, 64, 64, 16, codes, scales, None)
    with pytest.raises(ValueError, match=r"holds int4 weights, not int8$"):
        to_uint4_words(int8, torch.bfloat16)
    odd = _weight(torch.randn(12, 64, generator=gen), 32, integer_zeros=True)
    with pytest.raises(ValueError, match=r"packs 8 outputs a word, not 12$"):
        to_uint4_words(odd, torch.bfloat16)


@pytest.mark.parametrize("bias", [False, True])
def test_a_repacked_layer_computes_what_its_codes_did(bias: bool) -> None:
    gen = torch.Generator().manual_seed(11)
    device = GaudiLayoutCpu(use_native=False)
    layer = QuantizedLinear(128, 48, WeightQuantization(4, 64, integer_zeros=True), bias=bias)
    layer._kernels = device
    layer.load_rows(0, torch.randn(48, 128, generator=gen))
    if layer.bias is not None:
        layer.bias.data.normal_(generator=gen)
    x = torch.randn(5, 128, generator=gen)
    before = torch.nn.functional.linear(x, dequantize(layer.quantized()), layer.bias)
    assert layer.repack()
    # the codes, scales and mins are released, not kept behind empty views
    for emptied in (layer.codes, layer.scales, layer.mins):
        assert emptied is not None and emptied.untyped_storage().nbytes() == 0
    after = layer(x)
    assert layer.quantized().uint4 is not None
    assert (after - before).abs().max() <= 2**-7 * before.abs().max()
    # without a device layout nothing moves
    plain = QuantizedLinear(128, 48, WeightQuantization(4, 64))
    assert not plain.repack() and plain.codes.numel() == 48 * 64


def test_a_layer_the_words_cannot_hold_fails_the_load_naming_it() -> None:
    device = GaudiLayoutCpu(use_native=False)
    scheme = WeightQuantization(4, 32, integer_zeros=True)
    model = torch.nn.ModuleDict(
        {"up": QuantizedLinear(64, 16, scheme, kernels=device)}
        | {"odd": QuantizedLinear(64, 12, scheme, kernels=device)}
    )
    for layer in model.values():
        assert isinstance(layer, QuantizedLinear)
        layer.load_rows(0, torch.randn(layer.out_features, 64))
    with pytest.raises(ValueError, match=r"^odd: Gaudi's uint4 layout packs 8 outputs a word"):
        repack_layers(model)
    assert repack_layers(torch.nn.ModuleDict({"up": model["up"]})) == 0  # repacked already


@pytest.mark.hpu
@pytest.mark.skipif(not hpu_available(), reason="needs a Gaudi device")
def test_gaudi_reads_the_words_as_they_are_packed() -> None:
    gen = torch.Generator().manual_seed(5)
    device = HpuDevice()
    scheme = WeightQuantization(4, 64, integer_zeros=True)
    layer = QuantizedLinear(128, 48, scheme, kernels=device).to(device.torch_device)
    layer.load_rows(0, torch.randn(48, 128, generator=gen).to(device.torch_device))
    assert layer.repack()
    words = layer.quantized().uint4
    assert words is not None and words.qweight.device.type == "hpu"
    x = torch.randn(5, 128, generator=gen)
    out = layer(x.to(device.torch_device, torch.bfloat16)).float().cpu()
    cpu_words = type(words)(words.qweight.cpu(), words.qzeros.cpu(), words.scales.cpu())
    reference = x @ dequantize_words(cpu_words).t()
    assert (out - reference).abs().max() <= 2**-6 * reference.abs().max()
