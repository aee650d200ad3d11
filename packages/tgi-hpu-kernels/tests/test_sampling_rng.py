"""The counter-based noise: a pure function of (seed, step, token), well distributed."""

from __future__ import annotations

import math

import torch

from tgi_hpu_kernels.sampling.rng import (
    exponential_noise,
    mix32_,
    row_keys,
    seed_words,
    to_int32,
)

MASK32 = 0xFFFFFFFF


def _lowbias32(x: int) -> int:
    """The reference hash on Python ints (unsigned 32-bit arithmetic)."""
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & MASK32
    x ^= x >> 15
    x = (x * 0x735A2D97) & MASK32
    x ^= x >> 15
    return x


def test_mix32_wraps_like_unsigned_32_bit_arithmetic() -> None:
    values = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xDEADBEEF, 12345678, 0x9E3779B9]
    tensor = torch.tensor([to_int32(v) for v in values], dtype=torch.int32)
    assert mix32_(tensor).tolist() == [to_int32(_lowbias32(v)) for v in values]


def test_seed_words_split_a_u64() -> None:
    assert seed_words(0) == (0, 0)
    assert seed_words(2**64 - 1) == (-1, -1)
    assert seed_words(0x0000000100000002) == (2, 1)


def _noise(seed: int, step: int, token_ids: torch.Tensor) -> torch.Tensor:
    lo, hi = seed_words(seed)
    keys = row_keys(
        torch.tensor([lo], dtype=torch.int32),
        torch.tensor([hi], dtype=torch.int32),
        torch.tensor([step], dtype=torch.int32),
    )
    return exponential_noise(*keys, token_ids)


def test_noise_of_a_token_does_not_depend_on_the_other_tokens_asked() -> None:
    everything = _noise(7, 3, torch.arange(5000, dtype=torch.int32).unsqueeze(0))
    subset = torch.tensor([[4999, 17, 2048, 0]], dtype=torch.int32)
    assert torch.equal(_noise(7, 3, subset), everything[:, subset[0].long()])


def test_noise_of_a_row_does_not_depend_on_the_other_rows() -> None:
    seeds = [(1, 0), (2**63 + 5, 9), (42, 1000)]
    lo = torch.tensor([seed_words(s)[0] for s, _ in seeds], dtype=torch.int32)
    hi = torch.tensor([seed_words(s)[1] for s, _ in seeds], dtype=torch.int32)
    steps = torch.tensor([step for _, step in seeds], dtype=torch.int32)
    token_ids = torch.arange(300, dtype=torch.int32).unsqueeze(0)
    batched = exponential_noise(*row_keys(lo, hi, steps), token_ids)
    for row, (seed, step) in enumerate(seeds):
        assert torch.equal(batched[row : row + 1], _noise(seed, step, token_ids))


def test_noise_differs_across_seeds_and_steps() -> None:
    token_ids = torch.arange(64, dtype=torch.int32).unsqueeze(0)
    draws = [_noise(seed, step, token_ids) for seed in (0, 1, 2**32) for step in (0, 1)]
    for i, first in enumerate(draws):
        for second in draws[i + 1 :]:
            assert not torch.equal(first, second)


def test_noise_is_exponential() -> None:
    noise = _noise(123, 0, torch.arange(200_000, dtype=torch.int32).unsqueeze(0))[0].double()
    assert noise.min() > 0
    assert abs(noise.mean().item() - 1.0) < 0.01  # Exp(1): mean 1, variance 1
    assert abs(noise.var().item() - 1.0) < 0.02
    # P(E > 2) = e^-2, within 4 standard deviations of a binomial count
    expected = 200_000 * math.exp(-2)
    assert abs(int((noise > 2).sum()) - expected) < 4 * math.sqrt(expected)
    # neighbouring tokens are uncorrelated
    correlation = torch.corrcoef(torch.stack([noise[:-1], noise[1:]]))[0, 1]
    assert abs(correlation.item()) < 0.01


def test_the_top_uniform_still_gives_positive_noise() -> None:
    # (key 0, second key 7, token 3825391) draws the top 24-bit uniform, which float32
    # rounds to 1.0: its noise was -0.0, a NaN race that beat every grammar mask.
    key, second_key = torch.tensor([[0]], dtype=torch.int32), torch.tensor([[7]], dtype=torch.int32)
    noise = exponential_noise(key, second_key, torch.tensor([[3825391]], dtype=torch.int32))
    assert 0 < noise.item() < 1e-7  # -log(1 - 2**-24)
