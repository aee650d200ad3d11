"""Building blocks shared by the API types: integer widths, f32 logprobs, JSON encoding.

TGI's router is written in Rust, so its wire types have fixed-width integers (``u32``,
``u64``, ``i32``) and single-precision floats. The aliases here make msgspec reject what
serde rejects (a negative ``max_new_tokens``, a ``top_k`` beyond ``i32``), and ``f32``
rounds a logprob the way serde prints an ``f32``, so that our JSON matches TGI's byte for
byte. Nothing here knows about HTTP or about any particular route.
"""

from __future__ import annotations

import math
import struct
from typing import Annotated

import msgspec

__all__ = ["I32", "U32", "U64", "U64_MAX", "Usage", "check_u64", "encode_json", "f32"]

U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
I32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
# msgspec cannot express bounds beyond int64, so the upper bound of u64/usize fields is
# checked by the owning struct's __post_init__ (see ``check_u64``).
U64 = Annotated[int, msgspec.Meta(ge=0)]
U64_MAX = 2**64 - 1

_F32 = struct.Struct("<f")
_ENCODER = msgspec.json.Encoder()


def encode_json(obj: object) -> bytes:
    """Encode ``obj`` as compact JSON, the way serde_json (and so TGI) writes it.

    No whitespace, non-ASCII text as raw UTF-8, NaN and infinities as ``null``, struct
    fields in declaration order.
    """
    return _ENCODER.encode(obj)


def f32(value: float) -> float:
    """Round ``value`` to single precision and return its shortest decimal form.

    serde prints an ``f32`` logprob with the fewest digits that read back to the same
    ``f32`` (``-0.123``, not ``-0.12300000339746475``). Returning that decimal as a Python
    float makes msgspec print the same digits. NaN and infinities pass through (they
    encode as ``null``); finite values beyond the f32 range become infinities, as a cast
    to ``f32`` does.
    """
    if not math.isfinite(value):
        return value
    try:
        packed = _F32.pack(value)
    except OverflowError:
        return math.copysign(math.inf, value)
    single: float = _F32.unpack(packed)[0]
    for digits in range(1, 10):
        candidate = float(f"{single:.{digits}g}")
        if _F32.pack(candidate) == packed:
            return candidate
    return single  # pragma: no cover - 9 significant digits always round-trip an f32


def check_u64(name: str, value: int | None) -> None:
    """Reject a ``u64``/``usize`` field above 2**64-1 with serde's wording (a 422)."""
    if value is not None and value > U64_MAX:
        msg = f"invalid value: integer `{value}`, expected u64 (field `{name}`)"
        raise ValueError(msg)


class Usage(msgspec.Struct, gc=False):
    """Token accounting of an OpenAI response (chat and legacy completions)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
