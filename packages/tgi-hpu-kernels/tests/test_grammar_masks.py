"""``GrammarConstraints`` on a hand-made vocabulary: which ids each step allows, no model."""

from __future__ import annotations

import pytest
import torch

from tgi_hpu_kernels.sampling.grammar import GrammarConstraints, GrammarError

# ids 0..2 special (never in token_bytes), 3.. text; 9 is a second EOS; the model is wider (40)
TOKENS = {3: b"yes", 4: b"no", 5: b"y", 6: b"es", 7: b"n", 8: b"o", 10: b"x", 11: b" "}
EOS_IDS = (2, 9)
WIDTH = 40


def _constraints() -> GrammarConstraints:
    return GrammarConstraints(TOKENS, EOS_IDS, torch.device("cpu"), max_cached_indexes=2)


def _allowed(constraints: GrammarConstraints, request_ids: list[int]) -> list[set[int]]:
    logits = torch.zeros(len(request_ids), WIDTH)
    mask = constraints.prepare(request_ids, WIDTH)
    if mask is not None:
        constraints.apply_(mask, logits)
    return [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in logits]


def test_each_step_allows_only_what_continues_the_regex_then_every_eos() -> None:
    constraints = _constraints()
    constraints.add_sequence(1, "(yes|no)")
    assert _allowed(constraints, [1]) == [{3, 4, 5, 7}]
    constraints.advance([1], [5])  # "y"
    assert _allowed(constraints, [1]) == [{6}]
    constraints.advance([1], [6])  # "yes": complete, only the EOS ids
    assert _allowed(constraints, [1]) == [set(EOS_IDS)]


def test_eos_is_allowed_alongside_tokens_where_the_text_may_end_or_go_on() -> None:
    constraints = _constraints()
    constraints.add_sequence(1, "x+")
    constraints.advance([1], [10])
    assert _allowed(constraints, [1]) == [{10, *EOS_IDS}]


def test_unconstrained_rows_are_untouched_and_cost_nothing() -> None:
    constraints = _constraints()
    assert constraints.prepare([5, 6], WIDTH) is None  # no guide at all
    constraints.add_sequence(1, "x")
    logits = torch.randn(3, WIDTH)
    expected = logits.clone()
    mask = constraints.prepare([7, 1, 8], WIDTH)
    assert mask is not None and not mask.all_rows
    constraints.apply_(mask, logits)
    assert torch.equal(logits[[0, 2]], expected[[0, 2]])
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == [10]
    assert logits[1, 10] == expected[1, 10]  # allowed scores keep their value


def test_recompute_resumes_where_the_generated_tokens_left_the_guide() -> None:
    constraints = _constraints()
    constraints.add_sequence(1, "(no)+x")
    constraints.advance([1], [7])
    constraints.advance([1], [8])
    constraints.add_sequence(2, "(no)+x", generated_ids=[7, 8])
    assert _allowed(constraints, [1, 2]) == [{4, 7, 10}] * 2
    constraints.add_sequence(3, "(no)+x", generated_ids=[4, 10, 2])  # stops at the EOS
    assert _allowed(constraints, [3]) == [set(EOS_IDS)]


def test_release_and_eos_end_a_sequence() -> None:
    constraints = _constraints()
    constraints.add_sequence(1, "x")
    constraints.advance([1], [10])
    constraints.advance([1], [9])  # an EOS does not move the guide (nothing follows it)
    constraints.release(1)
    constraints.release(1)
    assert constraints.num_sequences == 0
    assert constraints.prepare([1], WIDTH) is None


def test_errors_name_the_problem() -> None:
    constraints = _constraints()
    with pytest.raises(GrammarError, match="grammar is not valid"):
        constraints.add_sequence(1, "(unclosed")
    constraints.add_sequence(1, "x")
    constraints.add_sequence(3, "x")
    # a token that breaks one grammar fails that sequence alone, and drops its guide
    failed = constraints.advance([1, 3], [3, 10])  # 10 is "x"
    assert list(failed) == [1] and "token 3 does not continue" in failed[1]
    assert constraints.num_sequences == 1
    with pytest.raises(GrammarError, match="does not continue"):
        constraints.add_sequence(2, "x", generated_ids=[4])
    with pytest.raises(GrammarError, match="EOS"):
        GrammarConstraints(TOKENS, (), torch.device("cpu"))


def test_indexes_are_cached_per_regex_and_bounded() -> None:
    constraints = _constraints()
    constraints.add_sequence(1, "x")
    first = constraints._index("x")
    constraints.add_sequence(2, "x")
    assert constraints._index("x") is first
    constraints.add_sequence(3, "y")
    constraints.add_sequence(4, "n")  # evicts "x" (max_cached_indexes=2)
    assert constraints._index("x") is not first
    assert _allowed(constraints, [1, 2]) == [{10}, {10}]  # live guides keep their index
