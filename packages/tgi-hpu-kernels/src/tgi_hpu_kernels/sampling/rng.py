"""Counter-based randomness for seeded, batch-invariant sampling.

Every random number is a pure function of ``(seed, step, token_id)`` computed with 32-bit
integer tensor ops on the device. There is no generator state: a row's draw cannot depend
on the other rows of the batch or on its row index, and a preempted sequence resumes its
stream knowing only how many tokens it has generated. The draw itself is an exponential
race (``argmax(p / E)`` with ``E ~ Exp(1)`` per token), which picks token ``i`` with
probability ``p[i]`` exactly, without a cumulative sum or a host sync.

What does not live here: which tokens may be drawn and with what probability (warpers,
penalties); this module only turns keys into noise.
"""

from __future__ import annotations

import torch

__all__ = ["exponential_noise", "mix32_", "row_keys", "seed_words", "to_int32"]

_MASK32 = 0xFFFFFFFF
_UNIFORM_BITS = 24  # float32 holds 24 bits of mantissa: every uniform is exact


def to_int32(value: int) -> int:
    """The low 32 bits of ``value`` as a signed int32 (what an int32 tensor stores)."""
    value &= _MASK32
    return value - (1 << 32) if value >= 1 << 31 else value


# lowbias32 (Wellons, hash-prospector): a full-avalanche 32-bit integer permutation.
_MUL_1 = to_int32(0x21F0AAAD)
_MUL_2 = to_int32(0x735A2D97)
# Arbitrary odd salts separating the key-derivation stages.
_STEP_SALT = to_int32(0x9E3779B9)
_SECOND_KEY_SALT = to_int32(0x85EBCA6B)


def mix32_(x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """lowbias32 applied in place to an int32 tensor (multiplications wrap mod 2**32).

    ``>>`` is arithmetic on signed ints, so each shift is masked to make it logical.
    ``scratch`` (an int32 tensor shaped like ``x``) saves the temporary of each shift: on a
    CPU a fresh 6 MB temporary costs more than the shift itself.
    """
    scratch = torch.empty_like(x) if scratch is None else scratch
    for shift, multiplier in ((16, _MUL_1), (15, _MUL_2), (15, None)):
        torch.bitwise_right_shift(x, shift, out=scratch)
        scratch &= (1 << (32 - shift)) - 1
        x ^= scratch
        if multiplier is not None:
            x *= multiplier
    return x


def seed_words(seed: int) -> tuple[int, int]:
    """A u64 seed as (low, high) signed int32 words."""
    seed &= (1 << 64) - 1
    return to_int32(seed), to_int32(seed >> 32)


def row_keys(
    seed_lo: torch.Tensor, seed_hi: torch.Tensor, steps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent int32 keys per row, ``[m, 1]`` each, from (seed, step).

    Args:
        seed_lo, seed_hi: ``[m]`` int32, the words of each row's seed (``seed_words``).
        steps: ``[m]`` int32, the number of tokens each row has generated so far.
    """
    key = mix32_(steps.to(torch.int32) ^ _STEP_SALT)
    key = mix32_(key ^ seed_hi)
    key = mix32_(key ^ seed_lo)
    # A second key added after the first mix keeps two rows whose first keys differ in
    # few bits from producing permuted copies of the same noise.
    second = mix32_(key ^ _SECOND_KEY_SALT)
    return key.unsqueeze(1), second.unsqueeze(1)


def exponential_noise(
    key: torch.Tensor, second_key: torch.Tensor, token_ids: torch.Tensor
) -> torch.Tensor:
    """``Exp(1)`` noise, float32, one value per (row key, token id).

    Args:
        key, second_key: ``[m, 1]`` int32 from ``row_keys``.
        token_ids: int32 token ids, ``[1, V]`` (every token) or ``[m, K]`` (a subset); the
            value for a token does not depend on which other tokens are asked for.
    Returns:
        ``[m, V]`` (or ``[m, K]``) float32 in ``(0, 17.33]``.
    """
    x = torch.bitwise_xor(token_ids, key)
    scratch = torch.empty_like(x)
    mix32_(x, scratch)
    x += second_key
    mix32_(x, scratch)
    shift = 32 - _UNIFORM_BITS
    torch.bitwise_right_shift(x, shift, out=scratch)
    scratch &= (1 << _UNIFORM_BITS) - 1
    uniform = x.view(torch.float32)  # reuse x's memory: the bits are no longer needed
    uniform.copy_(scratch)
    # (k + 0.5) / 2**24 lies strictly inside (0, 1), so the log is finite; but float32
    # rounds k + 0.5 to even, and the top k to 2**24: clamped below 1, its noise stays
    # positive (a 0 would make the race NaN on grammar-masked tokens, and NaN wins argmax).
    uniform.add_(0.5).mul_(2.0**-_UNIFORM_BITS).clamp_(max=1.0 - 2.0**-_UNIFORM_BITS)
    return uniform.log_().neg_()
