"""How big a grammar's automaton may get, checked before the runner compiles it.

The runner builds an ``outlines_core.Index`` over the model's whole vocabulary for every
regex; its time and memory grow with the automaton's transitions (states times the bytes
each state allows), times the vocabulary. ``[\\s\\S]{0,20000}`` (or a JSON schema with
``maxLength: 20000``) would take minutes and gigabytes, so the front end refuses such
grammars in two steps:

1. ``estimated_size``: a static estimate from Python's parse of the regex, with no
   automaton built: each node counts a state and as many transitions as bytes it
   matches, each bounded repetition multiplies its body. Cheap, and it keeps step 2 cheap;
2. ``count_transitions``: the exact transitions of the automaton over the 256 single bytes
   (the validation already builds it), a close proxy of the runner's work per vocabulary
   token.

Both are refused past their bound with "grammar is too complex: <why>".
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Any

from tgi_core.errors import ValidationError

# Python's own regex parser (private, untyped; its public names are deprecated from 3.11 on)
_NEW = sys.version_info >= (3, 11)
sre: Any = importlib.import_module("re._constants" if _NEW else "sre_constants")
sre_parse: Any = importlib.import_module("re._parser" if _NEW else "sre_parse")

__all__ = [
    "MAX_ESTIMATED_STATES",
    "MAX_ESTIMATED_TRANSITIONS",
    "MAX_GRAMMAR_TRANSITIONS",
    "check_estimate",
    "check_transitions",
    "estimated_size",
]

MAX_ESTIMATED_STATES = 10_000
MAX_ESTIMATED_TRANSITIONS = 1_000_000
"""Static bounds: they keep the byte-level compile of step 2 under ~0.5 s."""

MAX_GRAMMAR_TRANSITIONS = 100_000
"""Byte-level transitions (UTF-8 states included): ``[\\s\\S]{0,140}`` passes; the runner's
index of such a grammar over a 49k vocabulary compiles in ~1 s, off the engine thread."""

_BYTES = 256
_COUNTS = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", sre.MAX_REPEAT))


def estimated_size(regex: str) -> tuple[int, int]:
    """Estimated (states, transitions) of the byte automaton of ``regex``.

    A regex Python cannot parse (``outlines_core`` speaks Rust's dialect) is estimated
    from its text: its length times every repetition count, multiplied (pessimistic).
    """
    try:
        return _size(sre_parse.parse(regex))
    except (re.error, OverflowError, RecursionError, ValueError):
        estimate = max(len(regex), 1)
        for low, high in _COUNTS.findall(regex):
            estimate *= max(int(high or low), 1)
            if estimate > MAX_ESTIMATED_TRANSITIONS:
                break
        return estimate, estimate


def check_estimate(regex: str) -> None:
    """Step 1. Raises ``ValidationError`` past ``MAX_ESTIMATED_STATES`` or
    ``MAX_ESTIMATED_TRANSITIONS``."""
    states, transitions = estimated_size(regex)
    if states > MAX_ESTIMATED_STATES or transitions > MAX_ESTIMATED_TRANSITIONS:
        raise ValidationError(
            f"grammar is too complex: its repetitions expand to about {states} automaton "
            f"states and {transitions} transitions"
        )


def check_transitions(transitions: dict[Any, dict[Any, Any]]) -> None:
    """Step 2, on ``Index.get_transitions()`` over the byte vocabulary."""
    count = sum(len(targets) for targets in transitions.values())
    if count > MAX_GRAMMAR_TRANSITIONS:
        raise ValidationError(
            f"grammar is too complex: {count} automaton transitions "
            f"(at most {MAX_GRAMMAR_TRANSITIONS})"
        )


def _size(pattern: Any) -> tuple[int, int]:
    states = transitions = 0
    for op, arg in pattern:
        if op in _REPEATS:
            low, high, body = arg
            count = max(low, 1) if high == sre.MAXREPEAT else high
            body_states, body_transitions = _size(body)
            states += count * body_states
            transitions += count * body_transitions
        elif op in (sre.SUBPATTERN, sre.ASSERT, sre.ASSERT_NOT):
            body_states, body_transitions = _size(arg[-1])
            states += body_states
            transitions += body_transitions
        elif op == sre.BRANCH:
            for branch in arg[1]:
                branch_states, branch_transitions = _size(branch)
                states += branch_states
                transitions += branch_transitions
        else:
            states += 1
            transitions += _width(op, arg)
        if states > MAX_ESTIMATED_STATES or transitions > MAX_ESTIMATED_TRANSITIONS:
            break  # no need to walk the rest
    return states, transitions


def _width(op: Any, arg: Any) -> int:
    """How many bytes one node may match."""
    if op in (sre.ANY, sre.NOT_LITERAL):
        return _BYTES
    if op != sre.IN:
        return 1  # a literal, an anchor, a group reference
    width = 0
    negate = False
    for item, value in arg:
        if item == sre.NEGATE:
            negate = True
        elif item == sre.RANGE:
            width += value[1] - value[0] + 1
        elif item == sre.CATEGORY:
            width += _BYTES // 2  # \s, \d, \w and their negations: up to half the bytes
        else:
            width += 1
    width = min(width, _BYTES)
    return _BYTES - width if negate else width
