"""Stop sequences, checked on the decoded tail as TGI's ``StopSequenceCriteria`` does."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from tgi_core.contract import StopChecker
from tgi_core.tokenization import (
    StopSequenceChecker,
    TokenIdsTokenizer,
    Tokenizer,
    make_stop_checker,
)


def _first_stop(checker: StopChecker, ids: Sequence[int]) -> int | None:
    """Index of the token at which the checker first says stop."""
    for index, token_id in enumerate(ids):
        if checker(token_id):
            return index
    return None


def _token_completing(tokenizer: Tokenizer, ids: Sequence[int], needle: str) -> int:
    return next(i for i in range(len(ids)) if needle in tokenizer.decode(ids[: i + 1]))


def test_stops_at_the_token_completing_the_sequence(smollm2: Tokenizer) -> None:
    ids = smollm2.encode("The answer is 42. Then we go on talking.")
    checker = make_stop_checker(smollm2, ["42."])
    assert isinstance(checker, StopSequenceChecker)
    assert _first_stop(checker, ids) == _token_completing(smollm2, ids, "42.")
    assert checker.stop_sequence == "42."


def test_only_the_end_of_the_text_matches_like_tgi(smollm2: Tokenizer) -> None:
    # " answer" arrives as one token: "ans" is inside the text, never at its end
    ids = smollm2.encode("The answer")
    assert _first_stop(make_stop_checker(smollm2, ["ans"]), ids) is None


def test_a_final_newline_after_the_stop_sequence_still_matches_like_tgi() -> None:
    # TGI searches `re.escape(stop) + "$"`, and `$` also matches before one final newline
    backend = Backend(BPE({"x": 0, "done\n": 1, "done\n\n": 2}, []))
    tokenizer = Tokenizer(backend)
    assert tokenizer.decode([0, 1]) == "x done\n"
    assert _first_stop(make_stop_checker(tokenizer, ["done"]), [0, 1]) == 1
    assert _first_stop(make_stop_checker(tokenizer, ["done"]), [0, 2]) is None


def test_any_of_several_sequences(smollm2: Tokenizer) -> None:
    ids = smollm2.encode("Question: why? Answer: because.")
    checker = make_stop_checker(smollm2, ["Answer:", "never", "why?"])
    assert _first_stop(checker, ids) == _token_completing(smollm2, ids, "why?")
    assert isinstance(checker, StopSequenceChecker) and checker.stop_sequence == "why?"


def test_special_tokens_count_as_text(smollm2: Tokenizer) -> None:
    ids = smollm2.encode("Hello<|im_end|>")
    assert _first_stop(make_stop_checker(smollm2, ["<|im_end|>"]), ids) == len(ids) - 1


def test_multi_byte_stop_sequence(smollm2: Tokenizer) -> None:
    ids = smollm2.encode("Party time 🎉🎉 yes")
    assert _first_stop(make_stop_checker(smollm2, ["🎉🎉"]), ids) == _token_completing(
        smollm2, ids, "🎉🎉"
    )


def test_long_generations_keep_matching_at_the_end(smollm2: Tokenizer) -> None:
    ids = smollm2.encode("word " * 400 + "THE END")
    assert _first_stop(make_stop_checker(smollm2, ["THE END"]), ids) == len(ids) - 1
    # TGI keeps at most the last 300 characters: a longer stop sequence never matches
    long_stop = "word " * 70
    assert _first_stop(make_stop_checker(smollm2, [long_stop]), ids) is None


def test_first_generated_token_uses_the_prompt(smollm2: Tokenizer) -> None:
    prompt = smollm2.encode("Say hello")
    ids = smollm2.encode(" world", add_special_tokens=False)
    checker = make_stop_checker(smollm2, [" world"], prompt_ids=prompt)
    assert _first_stop(checker, ids) == len(ids) - 1


def test_no_stop_sequences_never_decodes() -> None:
    class Exploding(TokenIdsTokenizer):
        def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
            raise AssertionError("decoded without stop sequences")

    checker = make_stop_checker(Exploding(), [])
    assert not any(checker(i) for i in range(100))


def test_transparent_tokenizer_matches_concatenated_ids() -> None:
    # SKIP_TOKENIZER_IN_TGI: each token's text is its id, concatenated without separators
    checker = make_stop_checker(TokenIdsTokenizer(), ["56"])
    assert _first_stop(checker, [1, 5, 6, 7]) == 2
