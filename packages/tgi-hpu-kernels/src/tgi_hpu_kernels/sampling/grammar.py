"""Grammar-constrained generation: per-sequence regex guides and the logits masks they give.

``GrammarConstraints`` holds one ``outlines_core.Guide`` per constrained sequence (its
``SamplingParams.grammar``, a regex the front end compiled from the request's JSON schema or
regex). Each step the runner asks it to ``prepare`` the batch's masks (on the host, before the
forward pass, so that the work overlaps the device), ``apply_`` them to the logits (disallowed
tokens -> -inf) before the sampler's penalties, warpers and choice, and ``advance`` the guides
over the chosen tokens. TGI applies its grammar processor after the penalties and before the
warpers; penalties leave -inf at -inf, so the scores are the same, and the logprobs and top
tokens the sampler reports come from the masked scores, as in TGI.

The EOS token is allowed exactly where the text is complete; a model with several EOS ids gets
all of them there. Ids the tokenizer does not spell (special tokens, a model vocabulary wider
than the tokenizer's) are never allowed. Regex indexes are compiled off the engine thread,
with a deadline, and cached (``IndexCompiler``, reached through ``compiler``). Nothing here
runs for a batch without constrained sequences. Where the token bytes come from:
``tgi_core.tokenization.token_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from outlines_core import Guide, Vocabulary
from torch import nn

from tgi_hpu_kernels.sampling.grammar_compiler import COMPILE_DEADLINE_S, IndexCompiler

__all__ = ["GrammarConstraints", "GrammarError", "GrammarMask"]

_BITS = 32  # outlines_core writes the allowed tokens as an int32 bitmask


class GrammarError(ValueError):
    """A grammar the runner cannot use: an invalid regex, or no vocabulary to match it."""


@dataclass(frozen=True, slots=True)
class GrammarMask:
    """One step's masks: ``rows`` of the batch and their packed allowed-token bits."""

    rows: torch.Tensor  # [k] int64, on the device
    words: torch.Tensor  # [k, num_words] int32, on the device
    all_rows: bool  # every row of the batch is constrained (mask in place, no gather)


class GrammarConstraints:
    """Regex guides of the constrained sequences of one runner.

    Args:
        token_bytes: each non-special token id and its raw bytes (``token_bytes(tokenizer)``).
        eos_token_ids: every id that ends generation; allowed where the text is complete.
        device: where the logits live.
        max_cached_indexes: compiled regexes kept (compiling a JSON schema's regex can take
            seconds; the same schema comes back request after request).
        compile_deadline_s: the longest one regex's index may compile.
    """

    def __init__(
        self,
        token_bytes: Mapping[int, bytes],
        eos_token_ids: Sequence[int],
        device: torch.device,
        *,
        max_cached_indexes: int = 32,
        compile_deadline_s: float = COMPILE_DEADLINE_S,
    ) -> None:
        if not eos_token_ids:
            raise GrammarError("grammar-constrained generation needs an EOS token id")
        self._eos_token_ids = frozenset(eos_token_ids)
        self._eos_id = eos_token_ids[0]
        by_bytes: dict[bytes, list[int]] = {}
        for token_id, data in token_bytes.items():
            if token_id not in self._eos_token_ids:
                by_bytes.setdefault(data, []).append(token_id)
        if not by_bytes:
            raise GrammarError("grammar-constrained generation needs a token vocabulary")
        self._compiler = IndexCompiler(
            Vocabulary(self._eos_id, by_bytes),
            max_cached_indexes=max_cached_indexes,
            deadline_s=compile_deadline_s,
        )
        self._num_ids = max(*token_bytes, *eos_token_ids) + 1
        self._device = device
        # the EOS ids other than the guide's own copy its column of the mask
        self._extra_eos = torch.tensor(
            sorted(self._eos_token_ids - {self._eos_id}), dtype=torch.int64, device=device
        )
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        self._bias_table = torch.where(bits == 1, 0.0, float("-inf")).to(device)  # [256, 8]
        self._guides: dict[int, Any] = {}

    @property
    def compiler(self) -> IndexCompiler:
        """Where the regex indexes come from (ask it first: ``add_sequence`` compiles a regex
        it does not have on the calling thread)."""
        return self._compiler

    @property
    def num_sequences(self) -> int:
        """Constrained sequences registered now."""
        return len(self._guides)

    def add_sequence(self, request_id: int, regex: str, generated_ids: Iterable[int] = ()) -> None:
        """Start ``request_id``'s guide, advanced over the tokens it already generated (a
        recompute after a preemption), replacing any guide it had.

        Raises:
            GrammarError: the regex does not compile, or a generated token breaks it.
        """
        guide = Guide(self._index(regex))
        for token_id in generated_ids:
            if token_id in self._eos_token_ids:
                break
            _advance(guide, request_id, token_id)
        self._guides[request_id] = guide

    def release(self, request_id: int) -> None:
        """Drop ``request_id``'s guide; unknown ids are ignored."""
        self._guides.pop(request_id, None)

    def prepare(self, request_ids: Sequence[int], width: int) -> GrammarMask | None:
        """The masks of the constrained rows of a batch whose logits are ``width`` wide, or
        None when no row is constrained."""
        guides = self._guides
        rows = [row for row, request_id in enumerate(request_ids) if request_id in guides]
        if not rows:
            return None
        num_words = -(-max(width, self._num_ids) // _BITS)
        words = torch.empty((len(rows), num_words), dtype=torch.int32)
        for i, row in enumerate(rows):
            guide = guides[request_ids[row]]
            guide.write_mask_into(words[i].data_ptr(), num_words, 4)
        device = self._device
        return GrammarMask(
            rows=torch.tensor(rows, dtype=torch.int64).to(device, non_blocking=True),
            words=words.to(device, non_blocking=True),
            all_rows=len(rows) == len(request_ids),
        )

    def apply_(self, mask: GrammarMask, logits: torch.Tensor) -> None:
        """Set the disallowed tokens of the masked rows of ``logits`` ``[n, width]`` to -inf."""
        num_rows, width = mask.words.shape[0], logits.shape[1]
        if mask.words.shape[1] * _BITS < width:
            raise ValueError(f"the mask covers {mask.words.shape[1] * _BITS} ids < {width}")
        # Each mask byte looks up its 8 additive biases (0 or -inf): one gather and one add,
        # ~10x faster on the CPU than unpacking bits into a bool mask for masked_fill_.
        byte_ids = mask.words.view(torch.uint8).int()  # little-endian: byte i = ids 8i..8i+7
        bias = nn.functional.embedding(byte_ids, self._bias_table).view(num_rows, -1)
        if self._extra_eos.numel():
            bias[:, self._extra_eos] = bias[:, self._eos_id : self._eos_id + 1].clone()
        bias = bias[:, :width].to(logits.dtype)  # the bitmask is rounded up to 32 ids
        if mask.all_rows:
            logits.add_(bias)
        else:
            logits.index_add_(0, mask.rows, bias)

    def advance(self, request_ids: Sequence[int], token_ids: Sequence[int]) -> dict[int, str]:
        """Move each constrained sequence's guide over the token it was given.

        Returns the sequences whose token broke their grammar, with why; their guides are
        dropped (a failure of one sequence, never of the batch).
        """
        guides = self._guides
        failed: dict[int, str] = {}
        for request_id, token_id in zip(request_ids, token_ids, strict=True):
            guide = guides.get(request_id)
            if guide is not None and token_id not in self._eos_token_ids:
                try:
                    _advance(guide, request_id, token_id)
                except GrammarError as exc:
                    failed[request_id] = str(exc)
                    del guides[request_id]
        return failed

    def _index(self, regex: str) -> Any:
        try:
            return self._compiler.get(regex)
        except ValueError as exc:
            raise GrammarError(str(exc)) from exc


def _advance(guide: Any, request_id: int, token_id: int) -> None:
    try:
        guide.advance(token_id, return_tokens=False)
    except ValueError as exc:
        raise GrammarError(
            f"sequence {request_id}: token {token_id} does not continue its grammar ({exc})"
        ) from exc
