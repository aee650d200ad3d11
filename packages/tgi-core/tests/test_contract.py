from __future__ import annotations

import msgspec

from tgi_core.contract import (
    DecodeItem,
    DecodeShape,
    PrefillItem,
    PrefillShape,
    RequestEvent,
    SamplingParams,
    Shape,
    StepPlan,
    TokenEvent,
)


def test_plan_round_trips_through_msgpack() -> None:
    plan = StepPlan(
        step_id=3,
        shape=PrefillShape(batch_size=4, seq_len=128),
        prefill=(
            PrefillItem(
                request_id=7,
                token_ids=(1, 2, 3),
                num_prompt_tokens=3,
                num_cached_tokens=0,
                block_table=(5,),
                sampling=SamplingParams(do_sample=True, temperature=0.5, seed=42),
            ),
        ),
        released=(1, 2),
    )
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(plan), type=StepPlan)
    assert decoded == plan
    assert decoded.is_prefill
    assert decoded.num_sequences == 1


def test_shapes_are_a_tagged_union_and_hashable() -> None:
    shapes: list[Shape] = [DecodeShape(batch_size=8, num_blocks=2), PrefillShape(4, 128)]
    wire = msgspec.json.encode(shapes)
    assert msgspec.json.decode(wire, type=list[Shape]) == shapes
    assert len({*shapes, DecodeShape(8, 2)}) == 2


def test_decode_plan_and_events() -> None:
    plan = StepPlan(
        step_id=1,
        shape=DecodeShape(8, 1),
        decode=(DecodeItem(request_id=1, token_id=9, position=3, block_table=(0,)),),
    )
    assert not plan.is_prefill
    event = TokenEvent(request_id=1, token_id=2, logprob=-0.5)
    wire = msgspec.msgpack.encode(event)
    assert msgspec.msgpack.decode(wire, type=RequestEvent) == event
