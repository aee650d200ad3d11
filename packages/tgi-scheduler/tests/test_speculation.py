"""Speculative decoding in the scheduler (``--speculate``): n-gram drafts, verified by the
runner (``FakeRunner`` accepts a guess where it would have chosen that token itself), give
the tokens of plain decoding in fewer steps, inside every limit plain decoding has."""

from __future__ import annotations

from tgi_core.contract import FinishReason, GenerationRequest, TokenEvent
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler import Engine
from tgi_scheduler.speculation import MAX_VERIFY_ROWS, NgramDrafter
from tgi_scheduler.testing import FakeRunner, run_until_idle

# FakeRunner counts up: a prompt that already counted once is guessed right.
COUNTING = (1, 2, 3, 4, 5, 6, 7, 8, 1, 2)
SCATTERED = (5, 9, 5, 30, 5)  # its guesses (9 after 5) are wrong: the runner says 6


def test_the_latest_occurrence_of_the_longest_tail_is_followed() -> None:
    drafter = NgramDrafter()
    assert drafter.propose([1, 2, 3, 9, 1, 2, 4, 7, 1, 2], 3) == (4, 7, 1)  # latest (1, 2)
    tokens = [7, 1, 2, 3, 5, 1, 2, 8, 7, 1, 2]
    assert NgramDrafter().propose(tokens, 2) == (3, 5)  # (7, 1, 2) beats a later (1, 2)
    assert NgramDrafter().propose([4, 5, 6], 2) == ()  # the tail never occurred before
    assert NgramDrafter().propose([4, 5, 4], 0) == ()


def test_the_index_grows_with_the_sequence() -> None:
    drafter = NgramDrafter()
    tokens = [1, 2, 3]
    assert drafter.propose(tokens, 2) == ()
    tokens += [1, 2]
    assert drafter.propose(tokens, 2) == (3, 1)
    tokens += [9]
    assert drafter.propose(tokens, 2) == ()
    tokens += [1, 2]
    assert drafter.propose(tokens, 1) == (9,)  # the newest follower of (1, 2) wins


def _run(
    speculate: int, prompts: dict[int, tuple[int, ...]], max_new_tokens: int, **runner: object
) -> tuple[dict[int, list[TokenEvent]], Engine]:
    settings = SchedulerSettings(
        max_input_tokens=32, max_total_tokens=64, block_size=4, speculate=speculate
    )
    engine = Engine.create(settings, FakeRunner(128, 4, **runner), eos_token_ids=[2000])  # type: ignore[arg-type]
    engine.warmup()
    for request_id, prompt in prompts.items():
        engine.add_request(GenerationRequest(request_id, prompt, max_new_tokens))
    events = run_until_idle(engine)
    tokens = {i: [e for e in evs if isinstance(e, TokenEvent)] for i, evs in events.items()}
    return tokens, engine


def _ids(events: dict[int, list[TokenEvent]]) -> dict[int, list[int]]:
    return {i: [e.token_id for e in evs] for i, evs in events.items()}


def test_speculation_gives_plain_decoding_s_tokens_in_fewer_steps() -> None:
    prompts = {1: COUNTING, 2: SCATTERED, 3: COUNTING[2:]}
    plain, _ = _run(0, prompts, 12)
    fast, fast_engine = _run(3, prompts, 12)
    assert _ids(fast) == _ids(plain)
    for events in fast.values():
        assert len(events) == 12 and events[-1].finish_reason is FinishReason.LENGTH
        assert [e.finish_reason for e in events[:-1]] == [None] * 11
    skipped = fast_engine.stats().steps
    assert skipped is not None and skipped.skipped_tokens.bounds == (0.0, 1.0, 2.0, 3.0)
    assert skipped.skipped_tokens.sum > 0  # some steps gave a sequence more than one token
    # the batch lasts as long as its slowest sequence: without SCATTERED, fewer steps
    counting = {1: COUNTING, 3: COUNTING[2:]}
    plain_steps = _run(0, counting, 12)[1].stats().num_decode_steps
    fast_steps = _run(3, counting, 12)[1].stats().num_decode_steps
    assert fast_steps < plain_steps, (fast_steps, plain_steps)


def test_a_draft_stops_at_max_new_tokens_and_at_eos() -> None:
    exact, _ = _run(3, {1: COUNTING}, 5)
    assert len(exact[1]) == 5 and exact[1][-1].finish_reason is FinishReason.LENGTH
    # the 3rd generated token is EOS, in the middle of what a draft would have covered
    ended, _ = _run(3, {1: COUNTING}, 12, eos_after={1: 3}, eos_token_id=2000)
    assert [e.token_id for e in ended[1]] == [3, 4, 2000]
    assert ended[1][-1].finish_reason is FinishReason.EOS_TOKEN


def test_a_sequence_failing_alone_mid_draft_fails_only_itself() -> None:
    prompts = {1: COUNTING, 2: COUNTING[1:]}
    events, engine = _run(3, prompts, 12, fail_after={1: 4})
    assert len(events[1]) < 4 and len(events[2]) == 12
    assert engine.stats().batch_size == 0 and not engine.has_unfinished()


def test_a_batch_that_fills_the_row_budget_speculates_nothing() -> None:
    full = {i: COUNTING for i in range(1, MAX_VERIFY_ROWS + 1)}
    events, engine = _run(3, full, 8)
    steps = engine.stats().steps
    assert steps is not None and steps.skipped_tokens.sum == 0
    assert all(len(evs) == 8 for evs in events.values())
    few = {i: COUNTING for i in range(1, 4)}
    steps = _run(3, few, 8)[1].stats().steps
    assert steps is not None and steps.skipped_tokens.sum > 0


def test_a_stop_sequence_inside_an_accepted_draft_ends_the_request_there() -> None:
    settings = SchedulerSettings(
        max_input_tokens=32, max_total_tokens=64, block_size=4, speculate=3
    )
    # the stop checker sees every token in order, accepted draft tokens included
    engine = Engine.create(
        settings,
        FakeRunner(128, 4),
        eos_token_ids=[2000],
        stop_checker_factory=lambda request: lambda token_id: token_id == 5,
    )
    engine.add_request(GenerationRequest(1, COUNTING, 12))
    events = [e for e in run_until_idle(engine)[1] if isinstance(e, TokenEvent)]
    assert [e.token_id for e in events] == [3, 4, 5]  # 4, 5, 6, 7 were one step
    assert events[-1].finish_reason is FinishReason.STOP_SEQUENCE
