"""Builds a ready engine from ``Settings``: tokenizer, model runner, scheduler, warmup.

``build_engine`` is what the engine process (and an embedder's ``InProcessEngine``) runs
before serving: it loads the tokenizer (EOS ids, stop-sequence checkers), builds the
``TorchModelRunner`` from the runner's settings slice (with ``--num-shard`` > 1, after
starting the other ranks and joining their group: ``shard_supervision.py``), the
``BlockAllocator`` + ``Scheduler`` + ``Engine`` from the scheduler's slice, runs warmup with
its progress logged, and describes the result in an ``EngineInfo`` (the ready message). It
serves nothing itself; ``ReadyEngine.close`` ends what it started.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

from tgi_core.contract import GenerationRequest, ModelRunner, Shape, StopChecker, WarmupReport
from tgi_core.settings import Settings
from tgi_core.tokenization import (
    TokenizerLike,
    VocabularyError,
    load_tokenizer,
    make_stop_checker,
    token_bytes,
)
from tgi_scheduler import Engine
from tgi_scheduler.limits import token_budget
from tgi_server.ipc.messages import EngineInfo

if TYPE_CHECKING:
    from tgi_server.engine.shard_supervision import EngineShards

__all__ = [
    "ReadyEngine",
    "build_engine",
    "describe_engine",
    "make_stop_checker_factory",
]

logger = logging.getLogger(__name__)


class ReadyEngine(NamedTuple):
    """A warmed-up engine, the ``EngineInfo`` that describes it, and its shard processes."""

    engine: Engine
    info: EngineInfo
    shards: EngineShards | None = None

    def close(self) -> None:
        """Once, after the last step: the runner's ``close()`` where it has one
        (``TorchModelRunner``: write INC's FP8 measurements), then the shards stop."""
        close = getattr(self.engine.runner, "close", None)
        if callable(close):
            close()
        if self.shards is not None:
            self.shards.close()


def make_stop_checker_factory(
    tokenizer: TokenizerLike,
) -> Callable[[GenerationRequest], StopChecker | None]:
    """Stop-sequence checkers for the scheduler: one per request that has stop sequences."""

    def factory(request: GenerationRequest) -> StopChecker | None:
        if not request.stop_sequences:
            return None
        return make_stop_checker(tokenizer, request.stop_sequences, prompt_ids=request.prompt_ids)

    return factory


def describe_engine(
    engine: Engine,
    report: WarmupReport | None,
    *,
    model_id: str,
    eos_token_ids: tuple[int, ...] = (),
    model_dtype: str = "",
    model_device_type: str = "",
    compute_path: str = "",
) -> EngineInfo:
    """The ``EngineInfo`` of ``engine``, as TGI's warmup reports its capacity.

    ``max_supported_total_tokens`` is the usable KV capacity in tokens; it is also
    ``max_batch_total_tokens`` unless the settings cap it lower.
    """
    settings = engine.scheduler.settings
    allocator = engine.scheduler.allocator
    capacity = allocator.num_usable_blocks * allocator.block_size
    return EngineInfo(
        model_id=model_id,
        pid=os.getpid(),
        block_size=allocator.block_size,
        num_kv_blocks=allocator.num_blocks,
        max_supported_total_tokens=capacity,
        max_input_tokens=settings.max_input_tokens,
        max_total_tokens=settings.max_total_tokens,
        max_batch_total_tokens=min(capacity, token_budget(settings)),
        max_concurrent_requests=settings.max_concurrent_requests,
        eos_token_ids=eos_token_ids,
        warmup=report,
        model_dtype=model_dtype,
        model_device_type=model_device_type,
        compute_path=compute_path,
    )


def build_engine(
    settings: Settings,
    *,
    runner: ModelRunner | None = None,
    tokenizer: TokenizerLike | None = None,
) -> ReadyEngine:
    """Load, build and warm up the engine ``settings`` describe (rank 0's runner).

    Args:
        settings: the whole configuration; the scheduler and runner get their slices.
        runner: a runner to use instead of ``TorchModelRunner(settings.runner(0))``.
        tokenizer: a tokenizer to use instead of loading ``settings.model_id``'s.

    Raises:
        TokenizerLoadError, the loader's errors, ValueError: the model cannot be served.
    """
    if tokenizer is None:
        tokenizer = load_tokenizer(
            settings.model_id,
            revision=settings.revision,
            hf_token=settings.hf_token,
            tokenizer_config_path=settings.tokenizer_config_path,
        )
    dtype = device_type = compute_path = ""
    scheduler_settings = settings.scheduler()
    shards: EngineShards | None = None  # rank 0 of several: ranks 1..N-1, which it stops
    try:
        if runner is None:
            from tgi_hpu_kernels import TorchModelRunner
            from tgi_hpu_kernels.device import resolve_dtype, select_device
            from tgi_vlm.runner_parts import runner_parts_for

            runner_settings = settings.runner(rank=0)
            device = select_device(runner_settings.device, runner_settings)
            # the device picks an unset dtype (float32 on a CPU without bf16), the images' too
            runner_settings = resolve_dtype(runner_settings, device)
            vlm = runner_parts_for(runner_settings)  # a VLM's text model and image embedder
            if runner_settings.num_shard > 1:  # started, watched, and their group joined
                from tgi_server.engine.shard_supervision import EngineShards

                nested = None if vlm is None else vlm.nested_model
                shards = EngineShards.start(runner_settings, device, nested)
            torch_runner = TorchModelRunner(
                runner_settings,
                device=device,
                token_bytes=None if settings.disable_grammar_support else _token_bytes(tokenizer),
                eos_token_ids=tokenizer.eos_token_ids,
                prompt_embedder=None if vlm is None else vlm.prompt_embedder,
                nested_model=None if vlm is None else vlm.nested_model,
                history_inputs=None if vlm is None else vlm.history_inputs,
                group=None if shards is None else shards.group,
            )
            if torch_runner.speculate != scheduler_settings.speculate:  # a Medusa model's heads
                scheduler_settings = replace(scheduler_settings, speculate=torch_runner.speculate)
            if vlm is not None and vlm.expands_images:  # TGI-Gaudi warms VLM prefills from here
                scheduler_settings = replace(
                    scheduler_settings, min_prefill_len=settings.base_image_tokens
                )
            dtype = str(torch_runner.dtype).removeprefix("torch.")
            device_type = torch_runner.device.name
            kv_dtype = str(torch_runner.kv_cache_dtype).removeprefix("torch.")
            compute_path = (
                f"{torch_runner.device.describe()}; model: {torch_runner.implementation}; "
                f"weights: {torch_runner.weights}; KV cache: {kv_dtype}"
            )
            runner_eos_ids = torch_runner.eos_token_ids
            runner = torch_runner
        else:
            runner_eos_ids = ()
        # The tokenizer's EOS (generation_config included) first, then any the model config adds.
        eos_token_ids = tuple(dict.fromkeys((*tokenizer.eos_token_ids, *runner_eos_ids)))
        engine = Engine.create(
            scheduler_settings,
            runner,
            eos_token_ids=eos_token_ids,
            stop_checker_factory=make_stop_checker_factory(tokenizer),
        )
        logger.info("warming up %s", settings.model_id)
        report = engine.warmup(_log_warmup_progress)
        logger.info(
            "warmup done: %d shapes in %.1f s, %d KV blocks",
            report.num_shapes,
            report.seconds,
            report.num_kv_blocks,
        )
        info = describe_engine(
            engine,
            report,
            model_id=settings.model_id,
            eos_token_ids=eos_token_ids,
            model_dtype=dtype,
            model_device_type=device_type,
            compute_path=compute_path,
        )
    except BaseException:
        if shards is not None:
            shards.kill()
        raise
    return ReadyEngine(engine, info, shards)


def _token_bytes(tokenizer: TokenizerLike) -> dict[int, bytes] | None:
    """Each token's bytes for grammar-constrained generation; None (logged) if not spellable."""
    try:
        return token_bytes(tokenizer)
    except VocabularyError as exc:
        logger.warning("grammar-constrained generation is unavailable: %s", exc)
        return None


def _log_warmup_progress(done: int, total: int, shape: Shape) -> None:
    # About ten lines per warmup, whatever the number of shapes.
    if done == total or done % max(1, total // 10) == 0:
        logger.info("warmup %d/%d shapes (%s)", done, total, shape)
    else:
        logger.debug("warmup %d/%d shapes (%s)", done, total, shape)
