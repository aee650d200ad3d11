"""The contract between the scheduler, the model runner and the server.

The scheduler decides *what* runs, the runner decides *how*. One engine step is::

    plan = scheduler.schedule()          # StepPlan
    output = runner.execute(plan)        # StepOutput
    events = scheduler.update(plan, output)

Everything here is plain data (frozen ``msgspec.Struct``), so it crosses process boundaries
(ZeroMQ, shard processes) as cheaply as it crosses function calls. Nothing here imports
torch: the scheduler never sees a tensor, the runner never sees a request queue.

A sequence is identified by its request's ``request_id`` (one sequence per request), the same
name on both sides of the contract. A sequence's full data travels once, in a
``PrefillItem``; while it decodes, only the last token, its position and its block table
travel (``DecodeItem``). The runner keeps whatever per-sequence device
state it needs (sampling parameters, seeded generators, penalty counts) keyed by ``request_id``
and drops it when the id appears in ``StepPlan.released``. A runner that needs time to
ready a request before its prefill (a grammar's index) also implements ``RequestPreparer``:
the request waits outside the batch until it is ready, and the steps go on meanwhile.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Protocol, TypeAlias, runtime_checkable

import msgspec

__all__ = [
    "PREPARED",
    "PREPARING",
    "DecodeItem",
    "DecodeShape",
    "FailureKind",
    "FinishReason",
    "GenerationRequest",
    "ImageInput",
    "ModelRunner",
    "PrefillItem",
    "PrefillShape",
    "Preparation",
    "RequestEvent",
    "RequestFailed",
    "RequestPreparer",
    "SamplingParams",
    "SequenceOutput",
    "Shape",
    "StepOutput",
    "StepPlan",
    "StopChecker",
    "TokenChoice",
    "TokenEvent",
    "TopToken",
    "WarmupProgress",
    "WarmupReport",
]


class SamplingParams(msgspec.Struct, frozen=True, gc=False):
    """Per-sequence sampling parameters, already validated and resolved.

    ``do_sample`` is the final decision (TGI samples when ``do_sample`` is set or any warper
    is non-neutral); when it is False every warper is ignored and the token is the argmax of
    the penalised logits. ``seed`` makes sampling reproducible: the same seed and the same
    token history give the same token, whatever else shares the batch. ``grammar`` is a
    regular expression (compiled by the front end from the request's JSON schema or regex)
    that the generated text must match: the runner masks every token that would leave it,
    and allows the end-of-sequence token only where the text is complete.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    seed: int = 0
    top_n_tokens: int = 0
    watermark: bool = False
    grammar: str | None = None


class ImageInput(msgspec.Struct, frozen=True, gc=False):
    """An image of a vision-language prompt, as the front end read it: the encoded bytes
    (PNG, JPEG, ...), their MIME type and the decoded size. The prompt's ids already hold the
    image's placeholder tokens; the runner turns the bytes into the features that replace them.
    """

    data: bytes
    mimetype: str
    height: int
    width: int


class PrefillShape(msgspec.Struct, frozen=True, gc=False, tag="prefill"):
    """The padded shape of a prefill step.

    ``seq_len`` is the padded number of new tokens per sequence. ``num_blocks`` is the padded
    width of the block tables the attention reads: 0 when no sequence in the batch reuses
    cached KV (plain prefill attends only over its own tokens), otherwise the bucketed number
    of KV blocks covering cached prefix + new tokens.
    """

    batch_size: int
    seq_len: int
    num_blocks: int = 0


class DecodeShape(msgspec.Struct, frozen=True, gc=False, tag="decode"):
    """The padded shape of a decode step: batch size and block-table width (in blocks)."""

    batch_size: int
    num_blocks: int


Shape: TypeAlias = PrefillShape | DecodeShape


class PrefillItem(msgspec.Struct, frozen=True, gc=False):
    """A sequence to prefill: its full data, sent once (again after a preemption).

    ``token_ids`` is the whole history (prompt, then tokens generated before a preemption);
    the first ``num_cached_tokens`` of them already have KV in the cache (prefix-cache hit) and
    must not be recomputed. ``num_prompt_tokens`` tells the runner where the prompt ends, so
    that seeded sampling continues at the right step after a preemption. ``block_table``
    covers every token in ``token_ids`` plus the slot of the token this step generates.
    ``images`` are the request's images, in prompt order (sent with every prefill, a
    recompute's included): their features replace the prompt's image placeholder tokens.
    """

    request_id: int
    token_ids: tuple[int, ...]
    num_prompt_tokens: int
    num_cached_tokens: int
    block_table: tuple[int, ...]
    sampling: SamplingParams
    prompt_logprobs: bool = False
    images: tuple[ImageInput, ...] = ()
    adapter_id: str | None = None  # the LoRA adapter of this sequence


class DecodeItem(msgspec.Struct, frozen=True, gc=False):
    """A running sequence's next step: its last token at ``position`` (0-based).

    ``draft`` (speculative decoding) are tokens guessed to follow ``token_id``: the runner
    computes them too (positions ``position + 1 ...``, slots in ``block_table``) and answers
    with the tokens it accepts, then one of its own (``SequenceOutput.extra``).
    """

    request_id: int
    token_id: int
    position: int
    block_table: tuple[int, ...]
    adapter_id: str | None = None  # the sequence's LoRA adapter (as in its PrefillItem)
    draft: tuple[int, ...] = ()


class StepPlan(msgspec.Struct, frozen=True, gc=False):
    """What one engine step runs: either prefills or decodes, never both.

    ``shape`` is the padded bucket the step runs at; it is always one of the shapes the
    scheduler enumerated for warmup. ``released`` lists sequences whose runner-side state can
    be dropped (finished, aborted or preempted since the previous plan); the runner handles
    them before the items of this plan. A plan may carry no items (only releases).
    """

    step_id: int
    shape: Shape | None
    prefill: tuple[PrefillItem, ...] = ()
    decode: tuple[DecodeItem, ...] = ()
    released: tuple[int, ...] = ()

    @property
    def is_prefill(self) -> bool:
        return bool(self.prefill)

    @property
    def num_sequences(self) -> int:
        return len(self.prefill) + len(self.decode)


class TopToken(msgspec.Struct, frozen=True, gc=False, array_like=True):
    token_id: int
    logprob: float


class TokenChoice(msgspec.Struct, frozen=True, gc=False):
    """One more token of a speculative step, with what ``SequenceOutput`` says of its first."""

    token_id: int
    logprob: float
    top_tokens: tuple[TopToken, ...] = ()


class SequenceOutput(msgspec.Struct, frozen=True, gc=False):
    """The token a step produced for one sequence.

    ``logprob`` is the log-probability of ``token_id`` under the distribution after penalties
    and temperature (what TGI reports). ``top_tokens`` has ``top_n_tokens`` entries when the
    sequence asked for them. ``prompt_logprobs`` is set on a prefill output when the item
    asked for it: one value per prompt token, ``None`` for the first.

    ``error`` is set when this sequence, and only it, could not go on (its grammar broke,
    its sampling state was refused): the other fields mean nothing, the scheduler fails
    that request alone (``FailureKind.GENERATION``, this text its detail) and the rest of
    the batch carries on.
    A failure of the whole step is an exception of ``ModelRunner.execute`` instead.
    """

    request_id: int
    token_id: int
    logprob: float
    top_tokens: tuple[TopToken, ...] = ()
    prompt_logprobs: tuple[float | None, ...] | None = None
    error: str | None = None
    # a speculative step's tokens after ``token_id``, in order: the draft tokens accepted
    # after it, then the runner's own (``token_id`` is the draft's first, or its own)
    extra: tuple[TokenChoice, ...] = ()
    # the runner's guesses of the tokens after this step's last one (Medusa heads), for the
    # scheduler to send back as the next draft; None: the runner makes none
    draft: tuple[int, ...] | None = None


class StepOutput(msgspec.Struct, frozen=True, gc=False):
    """The runner's answer to a StepPlan: one output per item, in plan order."""

    step_id: int
    outputs: tuple[SequenceOutput, ...]


class WarmupProgress(Protocol):
    def __call__(self, done: int, total: int, shape: Shape) -> None: ...


class WarmupReport(msgspec.Struct, frozen=True):
    """What warmup did: the shapes it ran, how long it took, the KV capacity it settled on."""

    num_shapes: int
    seconds: float
    num_kv_blocks: int
    num_graphs: int = 0


@runtime_checkable
class ModelRunner(Protocol):
    """Runs plans on a device; tgi_hpu_kernels implements it, tgi_scheduler.testing fakes it."""

    @property
    def num_kv_blocks(self) -> int:
        """How many KV blocks of ``block_size`` tokens the cache holds."""
        ...

    @property
    def block_size(self) -> int: ...

    @property
    def num_unwarmed_shapes(self) -> int:
        """Shapes executed after warmup that warmup never ran (should stay 0)."""
        ...

    def warmup(
        self, shapes: Sequence[Shape], progress: WarmupProgress | None = None
    ) -> WarmupReport: ...

    def execute(self, plan: StepPlan) -> StepOutput: ...


class Preparation(msgspec.Struct, frozen=True, gc=False):
    """A runner's answer to ``RequestPreparer.prepare``: ``ready``, still under way (not
    ready, no error), or failed (``error``: why; that request alone fails, its kind
    ``FailureKind.GENERATION``)."""

    ready: bool
    error: str | None = None


PREPARED = Preparation(ready=True)
PREPARING = Preparation(ready=False)


@runtime_checkable
class RequestPreparer(Protocol):
    """A runner that readies some requests before their prefill, off the engine thread.

    Some work a prefill needs can take seconds (a grammar's index over the whole
    vocabulary); done inside a step it would stall every other sequence. The scheduler asks
    ``prepare`` when a request arrives, at every step while it waits (outside the batch, no
    KV blocks yet, counted against the concurrency limit), and again before each prefill of
    it (a recompute's included). It plans a prefill only right after a ready answer; the
    runner keeps what it prepared at least until the end of its next ``execute``.
    ``tgi_scheduler.testing.FakeRunner`` implements it; a runner that does not is never asked.
    """

    def prepare(self, request: GenerationRequest) -> Preparation:
        """Start or check ``request``'s preparation; never waits for the work itself."""
        ...

    def wait_prepared(self, timeout_s: float) -> None:
        """Block until a preparation under way ends, or ``timeout_s``: what the engine does
        when nothing but preparations is left to wait for."""
        ...


# ---------------------------------------------------------------------------------------
# Engine-level messages: what the server sends in and what comes back, per request.


class FinishReason(str, enum.Enum):
    """TGI's finish reasons (``details.finish_reason``)."""

    LENGTH = "length"
    EOS_TOKEN = "eos_token"
    STOP_SEQUENCE = "stop_sequence"


class GenerationRequest(msgspec.Struct, frozen=True, gc=False):
    """A validated, tokenized request, as the engine receives it.

    ``max_new_tokens`` is the full target; the scheduler may run it in chunks.
    ``stop_sequences`` are matched on decoded text by the engine's stop checker.
    ``images`` (vision-language models) are the prompt's images in order; ``prompt_ids``
    already hold their placeholder tokens.
    """

    request_id: int
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop_sequences: tuple[str, ...] = ()
    ignore_eos: bool = False
    prompt_logprobs: bool = False
    adapter_id: str | None = None
    images: tuple[ImageInput, ...] = ()


class TokenEvent(msgspec.Struct, frozen=True, gc=False, tag="token"):
    """One generated token of a request; the last one carries ``finish_reason``.

    ``queue_seconds`` (first event only) is how long the request waited before its prefill.
    ``prompt_logprobs`` (first event only) is set when the request asked for them.
    """

    request_id: int
    token_id: int
    logprob: float
    top_tokens: tuple[TopToken, ...] = ()
    finish_reason: FinishReason | None = None
    queue_seconds: float | None = None
    prompt_logprobs: tuple[float | None, ...] | None = None


class FailureKind(str, enum.Enum):
    """Why the engine ended a request without its final token: a fact, not a text.

    The server alone words each kind as TGI does (status, ``error_type``, message).
    """

    OVERLOADED = "overloaded"  # refused: max_concurrent_requests in flight, or draining
    GENERATION = "generation"  # the runner or the engine failed it while it was in flight


class RequestFailed(msgspec.Struct, frozen=True, gc=False, tag="failed"):
    """The engine refused or could not finish a request.

    ``kind`` says which (``FailureKind``); ``detail`` is what went wrong, in the engine's
    own words (a runner's exception text, ``the engine shut down ...``), empty when the
    kind says it all.
    """

    request_id: int
    kind: FailureKind
    detail: str = ""


RequestEvent: TypeAlias = TokenEvent | RequestFailed

StopChecker: TypeAlias = Callable[[int], bool]
"""Fed each generated token id; returns True once a stop sequence has appeared in the text."""
