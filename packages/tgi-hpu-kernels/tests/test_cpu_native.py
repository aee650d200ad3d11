"""The CPU's native kernels against their torch versions: paged attention over scattered
blocks (decode, prefill, cached prefixes, windows, GQA), the fused elementwise kernels, and
the decode-sized bf16 linear layer (including that a row's result ignores the rest of the
batch). The portable build (no AVX512-BF16) is checked too, where a compiler exists."""

from __future__ import annotations

import platform
from typing import NamedTuple

import pytest
import torch
from torch.nn import functional as nnf

from tgi_hpu_kernels.attention import PagedRows
from tgi_hpu_kernels.device.base import paged_attention_gather
from tgi_hpu_kernels.device.cpu_native import NativeKernels, native_kernels
from tgi_hpu_kernels.device.native_build import build_library, find_compiler, load_library
from tgi_hpu_kernels.layers.kernels import TorchLayerKernels

NATIVE = native_kernels()
pytestmark = pytest.mark.skipif(NATIVE is None, reason="no C compiler: native kernels absent")
TORCH = TorchLayerKernels()
BLOCK_SIZE, NUM_BLOCKS = 4, 48


class Problem(NamedTuple):
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    slots: torch.Tensor
    paged: PagedRows


def _problem(
    dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int, seqs: list[tuple[int, int]]
) -> Problem:
    """Random caches, queries and new keys/values; ``seqs`` holds (keys, queries) per
    sequence, the queries being its last positions (a prefill over ``keys - queries``
    cached tokens). Queries, keys and values are strided views of one projection, as the
    model passes them."""
    gen = torch.Generator().manual_seed(heads * 100 + head_dim)
    shape = (NUM_BLOCKS + 1, BLOCK_SIZE, kv_heads, head_dim)
    key_cache = torch.randn(shape, generator=gen).to(dtype)
    value_cache = torch.randn(shape, generator=gen).to(dtype)
    order = torch.randperm(NUM_BLOCKS, generator=gen).to(torch.int32)
    width = max(-(-keys // BLOCK_SIZE) for keys, _ in seqs)
    tables = torch.full((len(seqs), width), NUM_BLOCKS, dtype=torch.int32)
    slots = []
    used = 0
    for i, (keys, queries) in enumerate(seqs):
        count = -(-keys // BLOCK_SIZE)
        tables[i, :count] = order[used : used + count]
        used += count
        for pos in range(keys - queries, keys):
            slots.append(int(tables[i, pos // BLOCK_SIZE]) * BLOCK_SIZE + pos % BLOCK_SIZE)
    lens = [queries for _, queries in seqs]
    paged = PagedRows(
        tables,
        torch.tensor([keys for keys, _ in seqs], dtype=torch.int32),
        torch.tensor([sum(lens[:i]) for i in range(len(lens))], dtype=torch.int32),
        torch.tensor(lens, dtype=torch.int32),
    )
    qkv = torch.randn(sum(lens), heads + 2 * kv_heads, head_dim, generator=gen).to(dtype)
    return Problem(
        qkv[:, :heads],
        qkv[:, heads : heads + kv_heads],
        qkv[:, heads + kv_heads :],
        key_cache,
        value_cache,
        torch.tensor(slots, dtype=torch.int64),
        paged,
    )


def _attend(
    kernels: NativeKernels,
    p: Problem,
    scale: float,
    window: int | None,
    softcap: float | None = None,
) -> torch.Tensor:
    return kernels.paged_attention(
        p.query,
        p.key,
        p.value,
        key_cache=p.key_cache,
        value_cache=p.value_cache,
        slots=p.slots,
        paged=p.paged,
        scale=scale,
        sliding_window=window,
        softcap=softcap,
    )


def _reference(
    p: Problem, scale: float, window: int | None, softcap: float | None = None
) -> torch.Tensor:
    """The torch version over float32 copies (new keys and values written first)."""
    caches = [p.key_cache.float().clone(), p.value_cache.float().clone()]
    for cache, rows in zip(caches, (p.key, p.value), strict=True):
        cache.view(-1, *cache.shape[2:]).index_copy_(0, p.slots, rows.float())
    return paged_attention_gather(
        p.query.float(), *caches, p.paged, scale=scale, sliding_window=window, softcap=softcap
    )


ATTENTION_CASES = {
    "single": [(45, 1)],  # too few rows for the threads: KV heads become separate items
    "decode": [(1, 1), (7, 1), (30, 1), (13, 1), (22, 1)],
    "prefill": [(5, 5), (37, 37), (1, 1)],
    "prefix": [(21, 9), (40, 3), (6, 6)],
}


@pytest.mark.parametrize("case", ATTENTION_CASES)
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize(
    "sizes",
    [
        (torch.float32, 6, 2, 16),  # portable path
        (torch.bfloat16, 6, 2, 16),  # portable path, bf16
        (torch.bfloat16, 9, 3, 64),  # fast path (SmolLM2's shape)
        (torch.bfloat16, 4, 4, 128),  # fast path, no grouping
        (torch.bfloat16, 8, 2, 96),  # fast path, head_dim not a power of two
    ],
    ids=["f32-16", "bf16-16", "bf16-64", "bf16-128", "bf16-96"],
)
def test_paged_attention_matches_the_gather_reference(case, window, sizes):
    problem = _problem(*sizes, ATTENTION_CASES[case])
    ours = _attend(NATIVE, problem, 0.3, window)
    tolerance = 1e-5 if sizes[0] == torch.float32 else 2e-2
    torch.testing.assert_close(
        ours.float(), _reference(problem, 0.3, window), atol=tolerance, rtol=0
    )
    for cache, rows in ((problem.key_cache, problem.key), (problem.value_cache, problem.value)):
        assert torch.equal(cache.view(-1, *cache.shape[2:])[problem.slots], rows)


@pytest.mark.parametrize("case", ATTENTION_CASES)
@pytest.mark.parametrize(
    "sizes",
    [(torch.float32, 6, 2, 16), (torch.bfloat16, 9, 3, 64)],
    ids=["f32-16", "bf16-64"],
)
def test_paged_attention_soft_caps_the_scores(
    case: str, sizes: tuple[torch.dtype, int, int, int]
) -> None:
    """Gemma 2's ``softcap * tanh(score / softcap)``, on both paths, with a window."""
    problem = _problem(*sizes, ATTENTION_CASES[case])
    ours = _attend(NATIVE, problem, 0.3, 5, softcap=1.5)
    expected = _reference(problem, 0.3, 5, softcap=1.5)
    tolerance = 1e-5 if sizes[0] == torch.float32 else 2e-2
    torch.testing.assert_close(ours.float(), expected, atol=tolerance, rtol=0)
    assert (expected - _reference(problem, 0.3, 5)).abs().max() > 10 * tolerance


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_elementwise_kernels_match_torch(dtype):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, 96, generator=gen).to(dtype)
    residual = torch.randn(7, 96, generator=gen).to(dtype)
    weight = torch.rand(96, generator=gen).to(dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2

    torch.testing.assert_close(
        NATIVE.rms_norm(x, weight, 1e-5).float(),
        TORCH.rms_norm(x.float(), weight.float(), 1e-5),
        atol=tolerance,
        rtol=0,
    )
    expected, expected_sum = TORCH.add_rms_norm(x.float(), residual.float(), weight.float(), 1e-5)
    updated = residual.clone()
    out = NATIVE.rms_norm(x, weight, 1e-5, updated)
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=0)
    assert torch.equal(updated, x + residual)
    torch.testing.assert_close(updated.float(), expected_sum, atol=tolerance, rtol=0)

    gate_up = torch.randn(5, 2 * 48, generator=gen).to(dtype)
    torch.testing.assert_close(
        NATIVE.silu_and_mul(gate_up).float(),
        TORCH.silu_and_mul(gate_up.float()),
        atol=tolerance,
        rtol=0,
    )

    qkv = torch.randn(3, 5, 8, generator=gen).to(dtype)
    angles = torch.rand(3, 1, 4, generator=gen) * 6
    cos = torch.cat((angles.cos(), angles.cos()), -1).to(dtype)
    sin = torch.cat((-angles.sin(), angles.sin()), -1).to(dtype)
    expected = TORCH.rotary(qkv[:, :4].float(), cos.float(), sin.float())
    rotated = NATIVE.rotary_(qkv[:, :4], cos, sin)
    assert rotated.data_ptr() == qkv.data_ptr()  # in place
    torch.testing.assert_close(qkv[:, :4].float(), expected, atol=tolerance, rtol=0)


@pytest.mark.skipif(NATIVE is None or not NATIVE.fast_bf16, reason="needs AVX512-BF16")
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_torch_and_ignores_the_rest_of_the_batch(bias):
    gen = torch.Generator().manual_seed(6)
    weight = (torch.randn(37, 96, generator=gen) / 8).bfloat16()  # 37: a partial block of 4
    b = torch.randn(37, generator=gen).bfloat16() if bias else None
    x = torch.randn(9, 96, generator=gen).bfloat16()
    out = NATIVE.linear(x, weight, b)
    expected = nnf.linear(x.float(), weight.float(), None if b is None else b.float())
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=1e-2)
    for rows in (1, 4, 5):  # each row's bits do not depend on its batch
        assert torch.equal(NATIVE.linear(x[:rows], weight, b), out[:rows])
    assert torch.equal(NATIVE.linear(x[6:7], weight, b)[0], out[6])


@pytest.mark.skipif(
    find_compiler() is None or platform.machine() != "x86_64", reason="needs an x86 C compiler"
)
def test_portable_build_without_avx512_bf16(tmp_path):
    path = build_library(find_compiler(), extra_flags=("-mno-avx512bf16",), folder=tmp_path)
    portable = NativeKernels(load_library(path), path)
    assert not portable.fast_bf16
    problem = _problem(torch.bfloat16, 9, 3, 64, ATTENTION_CASES["prefix"])
    ours = _attend(portable, problem, 0.125, None)
    torch.testing.assert_close(ours.float(), _reference(problem, 0.125, None), atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match="AVX512-BF16"):
        portable.linear(problem.query[:, 0].contiguous(), problem.key[0].contiguous(), None)
