"""Rotary position embeddings: default, linear, dynamic NTK, Llama-3.x and LongRoPE scaling.

The cos/sin tables are computed once for every position the runner can see and indexed per
step (one gather), in the model dtype, with the same float32 frequency math as
transformers. Dynamic NTK is the exception: past ``max_position_embeddings`` its base
depends on the longest sequence in the step, so ``ensure_length`` recomputes the tables in
place when a step goes beyond what they were last built for (TGI's and transformers' rule;
KV computed earlier keeps its old rotation, as in both).

LongRoPE (Phi-3) divides each frequency by a short or a long factor and scales cos/sin by an
attention factor. The factor set is chosen per position (TGI's rule): the short factors below
``original_max_position_embeddings``, the long ones from it on, so a position's rotation never
changes and KV written once stays valid (paging, prefix caching, batching). transformers picks
one set per forward from the longest position in it, so it gives these rotations when fed one
token at a time (or a prompt that fits the original context, then cached decode steps), and
long factors everywhere in one uncached forward past the original context.

With a partial rotary factor (Phi-4-mini) only the first ``rotary_dim`` dims of each head
rotate, pairing dims ``i`` and ``i + rotary_dim / 2``; the tables pair ``i`` and
``i + head_dim / 2`` and hold cos 1, sin 0 on the pass-through dims, for q/k rows loaded in
``rotary_row_order`` (the same order for q and k, so q.k is unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "RopeConfig",
    "RotaryEmbedding",
    "apply_rotary",
    "attention_scaling",
    "inverse_frequencies",
    "rotary_row_order",
]

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "longrope")


@dataclass(frozen=True, slots=True)
class RopeConfig:
    """RoPE parameters as read from ``rope_parameters`` / ``rope_scaling`` of a config."""

    rope_type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None
    # Per-frequency divisors stored by llama.cpp (``rope_freqs.weight``, Llama 3.x GGUFs).
    freq_factors: tuple[float, ...] | None = None
    # LongRoPE: per-frequency divisors below / from the original context, and the cos/sin
    # scale (None: derived from ``factor`` and the original context, as transformers does).
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    attention_factor: float | None = None
    partial_rotary_factor: float = 1.0  # the fraction of each head's dims that rotate

    def rotary_dim(self, head_dim: int) -> int:
        return int(head_dim * self.partial_rotary_factor)


def inverse_frequencies(
    rope: RopeConfig, head_dim: int, max_position_embeddings: int, seq_len: int | None = None
) -> Tensor:
    """float32 ``[rotary_dim // 2]`` inverse frequencies (transformers' ``ROPE_INIT_FUNCTIONS``;
    LongRoPE: the long factors when ``seq_len`` exceeds the original context)."""
    dim = rope.rotary_dim(head_dim)
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    base = rope.theta
    if rope.rope_type == "dynamic":
        length = max(seq_len or max_position_embeddings, max_position_embeddings)
        growth = rope.factor * length / max_position_embeddings - (rope.factor - 1)
        base = base * growth ** (dim / (dim - 2))
    if rope.rope_type == "longrope":
        original = rope.original_max_position_embeddings or max_position_embeddings
        factors = rope.long_factor if seq_len and seq_len > original else rope.short_factor
        return 1.0 / (torch.tensor(factors, dtype=torch.float32) * base**exponents)
    inv_freq = 1.0 / (base**exponents)
    if rope.freq_factors is not None:
        inv_freq = inv_freq / torch.tensor(rope.freq_factors, dtype=torch.float32)
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type == "llama3":
        return _llama3_scaling(rope, inv_freq, max_position_embeddings)
    return inv_freq


def _llama3_scaling(rope: RopeConfig, inv_freq: Tensor, max_position_embeddings: int) -> Tensor:
    old_context = rope.original_max_position_embeddings or max_position_embeddings
    low_freq_wavelen = old_context / rope.low_freq_factor
    high_freq_wavelen = old_context / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_context / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def attention_scaling(rope: RopeConfig) -> float:
    """The factor cos and sin are multiplied by (LongRoPE's attention factor; else 1)."""
    if rope.rope_type != "longrope":
        return 1.0
    if rope.attention_factor is not None:
        return rope.attention_factor
    original = rope.original_max_position_embeddings
    if rope.factor <= 1.0 or not original:
        return 1.0
    return math.sqrt(1 + math.log(rope.factor) / math.log(original))


def rotary_row_order(head_dim: int, rotary_dim: int) -> Tensor:
    """The order of one head's q/k rows for the tables when only ``rotary_dim`` dims rotate:
    each rotated half first in its half of the head, the pass-through dims after it."""
    half, passed = rotary_dim // 2, (head_dim - rotary_dim) // 2
    rotated = torch.arange(half)
    rest = torch.arange(rotary_dim, head_dim)
    return torch.cat((rotated, rest[:passed], rotated + half, rest[passed:]))


class RotaryEmbedding:
    """cos and signed-sin tables ``[max_positions, head_dim]`` on the model's device.

    ``signed_sin`` is ``cat(-sin, sin)`` so that rotation is ``x * cos + swap_halves(x) *
    signed_sin``, one op fewer than transformers' ``rotate_half`` and bit-identical to it.
    """

    def __init__(
        self,
        rope: RopeConfig,
        *,
        head_dim: int,
        max_position_embeddings: int,
        max_positions: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.rope = rope
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings
        self.max_positions = max(max_positions, 1)
        self._dtype = dtype
        self._device = device
        self._built_for = max_position_embeddings
        self.cos, self.signed_sin = self._tables(None)

    def _tables(self, seq_len: int | None) -> tuple[Tensor, Tensor]:
        rope, max_len = self.rope, self.max_position_embeddings
        inv_freq = inverse_frequencies(rope, self.head_dim, max_len, seq_len)
        positions = torch.arange(self.max_positions, dtype=torch.int64).float()
        freqs = torch.outer(positions, inv_freq)  # [positions, rotary_dim // 2]
        if rope.rope_type == "longrope":
            original = rope.original_max_position_embeddings or max_len
            long_inv_freq = inverse_frequencies(rope, self.head_dim, max_len, original + 1)
            long = torch.outer(positions, long_inv_freq)
            freqs = torch.where(positions.unsqueeze(1) >= original, long, freqs)
        scale = attention_scaling(rope)
        cos, sin = freqs.cos() * scale, freqs.sin() * scale
        passed = (self.head_dim - rope.rotary_dim(self.head_dim)) // 2
        if passed:
            cos = torch.cat((cos, torch.ones(len(positions), passed)), dim=-1)
            sin = torch.cat((sin, torch.zeros(len(positions), passed)), dim=-1)
        cos_table = torch.cat((cos, cos), dim=-1)
        sin_table = torch.cat((-sin, sin), dim=-1)
        return (
            cos_table.to(self._device, self._dtype),
            sin_table.to(self._device, self._dtype),
        )

    def ensure_length(self, seq_len: int) -> None:
        """Dynamic NTK only: rebuilds the tables in place for a step reaching ``seq_len``."""
        if self.rope.rope_type != "dynamic":
            return
        target = max(seq_len, self.max_position_embeddings)
        if target == self._built_for:
            return
        cos, signed_sin = self._tables(target)
        self.cos.copy_(cos)
        self.signed_sin.copy_(signed_sin)
        self._built_for = target

    def lookup(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``positions`` ``[N]`` -> cos, signed_sin ``[N, 1, head_dim]`` (broadcast over heads)."""
        cos = self.cos.index_select(0, positions).unsqueeze(1)
        sin = self.signed_sin.index_select(0, positions).unsqueeze(1)
        return cos, sin


def apply_rotary(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """Rotates ``x`` ``[N, heads, head_dim]`` (non-interleaved halves, as HF Llama)."""
    n, heads, head_dim = x.shape
    swapped = x.view(n, heads, 2, head_dim // 2).flip(2).view(n, heads, head_dim)
    return x * cos + swapped * signed_sin
