"""Embedding tgi-scheduler in an asyncio program: one engine task, many streaming consumers.

Needs only ``pip install tgi-scheduler`` (which pulls tgi-core and msgspec). Run it with
``python async_driver.py``: four consumers ask for tokens at once, the engine batches them,
each consumer prints its tokens as they stream in, and one leaves early (its request is
aborted and its KV blocks freed).

The engine is single-threaded and ``Engine.step`` blocks while the model runs, so every
engine call (``add_request``, ``abort``, ``step``) runs on one worker thread, and the event
loop stays free to serve consumers meanwhile. Requests and aborts are collected on the loop
and handed to that thread before each step.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor

from tgi_core.contract import (
    GenerationRequest,
    RequestEvent,
    SequenceOutput,
    Shape,
    StepOutput,
    StepPlan,
    TokenEvent,
    WarmupProgress,
    WarmupReport,
)
from tgi_core.settings.slices import SchedulerSettings
from tgi_scheduler import Engine, SchedulerStats

VOCAB_SIZE = 1000
STEP_SECONDS = 0.002  # what a forward pass might cost; the loop must not block on it


class CountingRunner:
    """A toy model (the ``ModelRunner`` protocol): the next token is the last one + 1."""

    num_kv_blocks = 64
    block_size = 16
    num_unwarmed_shapes = 0

    def warmup(
        self, shapes: Sequence[Shape], progress: WarmupProgress | None = None
    ) -> WarmupReport:
        for done, shape in enumerate(shapes, 1):
            if progress is not None:
                progress(done, len(shapes), shape)
        return WarmupReport(len(shapes), 0.0, self.num_kv_blocks)

    def execute(self, plan: StepPlan) -> StepOutput:
        time.sleep(STEP_SECONDS)
        last = [(item.request_id, item.token_ids[-1]) for item in plan.prefill]
        last += [(item.request_id, item.token_id) for item in plan.decode]
        outputs = tuple(SequenceOutput(seq, (token + 1) % VOCAB_SIZE, 0.0) for seq, token in last)
        return StepOutput(plan.step_id, outputs)


class AsyncEngine:
    """Streams each request's tokens to the coroutine that asked for them."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._ids = itertools.count()
        self._streams: dict[int, asyncio.Queue[RequestEvent]] = {}
        self._new: list[GenerationRequest] = []
        self._aborted: list[int] = []
        self._wakeup = asyncio.Event()
        # One thread for every engine call: the engine is not thread-safe.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="engine")

    async def generate(
        self, prompt_ids: Sequence[int], max_new_tokens: int
    ) -> AsyncGenerator[int, None]:
        """Yield the request's tokens as the engine produces them."""
        request_id = next(self._ids)
        stream: asyncio.Queue[RequestEvent] = asyncio.Queue()
        self._streams[request_id] = stream
        self._new.append(GenerationRequest(request_id, tuple(prompt_ids), max_new_tokens))
        self._wakeup.set()
        try:
            while True:
                event = await stream.get()
                if not isinstance(event, TokenEvent):
                    raise RuntimeError(f"request {request_id} failed: {event}")
                yield event.token_id
                if event.finish_reason is not None:
                    return
        finally:
            if self._streams.pop(request_id, None) is not None:  # left before the end
                self._aborted.append(request_id)
                self._wakeup.set()

    async def run(self) -> None:
        """The engine loop; runs until cancelled."""
        loop = asyncio.get_running_loop()
        busy = False
        while True:
            if not (self._new or self._aborted or busy):
                self._wakeup.clear()
                await self._wakeup.wait()
            new, self._new = self._new, []
            aborted, self._aborted = self._aborted, []
            events, busy = await loop.run_in_executor(self._thread, self._step, new, aborted)
            for event in events:
                stream = self._streams.get(event.request_id)
                if stream is not None:
                    stream.put_nowait(event)
                if isinstance(event, TokenEvent) and event.finish_reason is None:
                    continue
                self._streams.pop(event.request_id, None)

    def _step(
        self, new: list[GenerationRequest], aborted: list[int]
    ) -> tuple[list[RequestEvent], bool]:
        """On the engine thread: take the news, run one step; its events, and whether
        requests are left."""
        for request in new:
            self._engine.add_request(request)
        for request_id in aborted:
            self._engine.abort(request_id)
        return self._engine.step(), self._engine.has_unfinished()

    async def stats(self) -> SchedulerStats:
        """The engine's counters, read on its thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._engine.stats)

    def close(self) -> None:
        self._thread.shutdown(wait=True)


async def consume(
    driver: AsyncEngine, name: str, prompt: Sequence[int], stop_after: int
) -> list[int]:
    """Print tokens as they arrive; leave after ``stop_after`` of them."""
    tokens: list[int] = []
    stream = driver.generate(prompt, max_new_tokens=8)
    async for token in stream:
        tokens.append(token)
        print(f"{name}: {token}", flush=True)
        if len(tokens) == stop_after:
            break
    await stream.aclose()  # runs generate's cleanup now: the request is aborted
    return tokens


async def main(runner: CountingRunner | None = None) -> dict[str, list[int]]:
    """Four concurrent consumers; returns the tokens each one read."""
    settings = SchedulerSettings(max_input_tokens=64, max_total_tokens=128, block_size=16)
    # An EOS id the toy never emits: every request runs to its max_new_tokens.
    engine = Engine.create(settings, runner or CountingRunner(), eos_token_ids=[VOCAB_SIZE])
    engine.warmup()
    driver = AsyncEngine(engine)
    loop_task = asyncio.create_task(driver.run())
    prompts = {"a": [10], "b": [100, 101], "c": [500, 501, 502], "early": [900]}
    try:
        results = await asyncio.gather(
            *(
                consume(driver, name, prompt, 3 if name == "early" else 8)
                for name, prompt in prompts.items()
            )
        )
        # The early leaver's blocks come back once the engine has handled its abort.
        while (stats := await driver.stats()).kv_blocks_used or stats.batch_size:
            await asyncio.sleep(STEP_SECONDS)
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
        driver.close()
    print("kv blocks in use at the end:", stats.kv_blocks_used)
    return dict(zip(prompts, results, strict=True))


if __name__ == "__main__":
    for name, tokens in asyncio.run(main()).items():
        print(name, tokens)
