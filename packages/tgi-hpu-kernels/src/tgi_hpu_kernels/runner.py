"""``TorchModelRunner``: the ModelRunner of tgi_core.contract, on HPU, CUDA or the CPU.

One step: drop released sequences, register new prefills with the sampler, run the plan's
forward pass (``forward_pass.py``: the step's tensors, the model through the device's step
runner, graphs where the device has them, in step with the other shards), take the logits of
each real sequence's last token, sample, and answer
one ``SequenceOutput`` per item in plan order (with ``error`` set for a sequence that failed
alone: its grammar or parameters; the step goes on for the others). As a ``RequestPreparer``
it compiles a constrained request's grammar index on a background thread, with a deadline,
before the engine lets the request into the batch (rank 0 only: the other shards never
sample). The runner owns
device tensors only (weights, KV cache, graphs); request bookkeeping stays in the
scheduler, and the sampler and grammar state of live sequences in ``sequence_sampling.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import msgspec
import torch
from torch import Tensor

from tgi_core.contract import (
    GenerationRequest,
    Preparation,
    SequenceOutput,
    Shape,
    StepOutput,
    StepPlan,
    WarmupProgress,
    WarmupReport,
)
from tgi_core.nested_model import NestedTextModel
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.device import Device, resolve_dtype, select_device
from tgi_hpu_kernels.forward_pass import ForwardPass, is_speculative
from tgi_hpu_kernels.loader import load_model, torch_dtype
from tgi_hpu_kernels.lora import load_lora_adapters
from tgi_hpu_kernels.medusa import MedusaHeads, with_drafts, with_medusa
from tgi_hpu_kernels.memory import allocate_kv_cache
from tgi_hpu_kernels.models.config import ModelConfig
from tgi_hpu_kernels.models.transformers_recompute import HistoryInputs, RecomputingCausalLM
from tgi_hpu_kernels.parallel.group import TensorParallelGroup, check_group
from tgi_hpu_kernels.profiling import StepProfiler
from tgi_hpu_kernels.prompt_embedding import PromptEmbedder
from tgi_hpu_kernels.quantization import check_quantize, fp8_at_load
from tgi_hpu_kernels.sequence_sampling import SequenceSampling
from tgi_hpu_kernels.served_model import describe_implementation, step_runner_for
from tgi_hpu_kernels.speculative import choose_verified
from tgi_hpu_kernels.step_inputs import KVLayout
from tgi_hpu_kernels.warmup import DummySize, dummy_plan, dummy_sizes, run_warmup, shapes_to_warm

__all__ = ["TorchModelRunner"]

logger = logging.getLogger(__name__)


class TorchModelRunner:
    """Runs StepPlans on one device (implements ``tgi_core.contract.ModelRunner`` and
    ``RequestPreparer``).

    Args:
        settings: the runner's settings slice (model, dtype, device, limits, Gaudi switches,
            profiling).
        device: a backend to use instead of ``select_device(settings.device, settings)``.
        num_kv_blocks: the KV pool size, overriding ``settings.num_kv_blocks`` and sizing from
            free memory (``memory.py``).
        token_bytes: each non-special token id's raw bytes
            (``tgi_core.tokenization.token_bytes(tokenizer)``); without it a sequence with a
            ``grammar`` fails its step.
        eos_token_ids: ids that end generation besides the model config's (the tokenizer's,
            generation_config's); a grammar allows all of them where its text is complete.
        prompt_embedder: writes image features over placeholder rows on prefills that carry
            images (``tgi_vlm``); without it images are refused. Rank 0's alone: the other
            ranks of a sharded VLM receive rank 0's prompt embeddings instead.
        nested_model: where the text model sits in a multimodal checkpoint (``tgi_vlm``'s
            registry gives each family's); the runner serves that text model.
        history_inputs: a multimodal checkpoint transformers serves whole (``tgi_vlm``'s
            family for it): the images' inputs of each recomputed step.
        group: this rank's tensor-parallel group when ``num_shard > 1``, joined by whoever
            started the other ranks (the server's engine; ``parallel/`` has the mechanics).
            The runner starts, watches and stops no process.

    The KV pool is allocated here, so ``num_kv_blocks`` is known right after construction.
    """

    def __init__(
        self,
        settings: RunnerSettings,
        *,
        device: Device | None = None,
        num_kv_blocks: int | None = None,
        token_bytes: Mapping[int, bytes] | None = None,
        eos_token_ids: Sequence[int] = (),
        prompt_embedder: PromptEmbedder | None = None,
        nested_model: NestedTextModel | None = None,
        history_inputs: HistoryInputs | None = None,
        group: TensorParallelGroup | None = None,
    ) -> None:
        self._device = device or select_device(settings.device, settings)
        settings, medusa = with_medusa(settings)
        self._settings = settings = resolve_dtype(settings, self._device)
        check_quantize(settings, self._device.quantized_kernels)
        if settings.speculate and self._device.needs_static_shapes:
            raise ValueError(
                f"--speculate runs on packed steps; {self._device.name} runs static shapes "
                "here (the CPU's default packs them)"
            )
        if (warning := self._device.dtype_warning(settings.dtype)) is not None:
            logger.warning(warning)
        check_group(settings, group)
        self._group = group
        loaded = load_model(
            settings,
            backend=self._device,
            device=self._device.torch_device,
            group=group,
            gguf_quantized=self._device.serves_gguf_quantized(torch_dtype(settings.dtype)),
            quantized_kernels=self._device.quantized_kernels,
            nested_model=nested_model,
            history_inputs=history_inputs,
        )
        self._model = loaded.model
        self._config = c = loaded.config
        self._dtype = loaded.dtype
        self._weights = loaded.quantization
        # FP8: INC patches the layers before any graph wraps them (quantization.py)
        self._quantization = fp8_at_load(self._model, settings, loaded.dtype, self._device.name)
        self._medusa = (
            MedusaHeads.load(
                medusa,
                hidden_size=loaded.config.hidden_size,
                vocab_size=loaded.config.vocab_size,
                dtype=loaded.dtype,
                device=self._device.torch_device,
            )
            if medusa is not None and settings.rank == 0  # rank 0 alone samples
            else None
        )
        self._lora = load_lora_adapters(
            self._model,
            settings,
            raw_config=loaded.raw_config,
            device_name=self._device.name,
            fp8=self._quantization is not None,
        )
        self._kv = allocate_kv_cache(
            settings,
            self._device,
            c,
            loaded.dtype,
            num_kv_blocks,
            agree=group.min_over_ranks if group else None,
        )
        # FP8 blocks are read through a widening gather, not the in-place paged kernels
        paged = not self._kv.is_narrowed and self._device.reads_paged_kv(
            loaded.dtype,
            num_heads=c.num_attention_heads,
            num_kv_heads=c.num_key_value_heads,
            head_dim=c.head_dim,
        )
        self._layout = KVLayout(
            settings.block_size,
            self._kv.num_blocks,
            c.num_key_value_heads,
            c.window,
            paged=paged,
        )
        self._step = step_runner_for(self._device, self._model, self._kv)
        self._forward = ForwardPass(
            self._model,
            self._device,
            self._layout,
            self._step,
            group=group,
            lora=self._lora,
            prompt_embedder=prompt_embedder,
        )
        self._profiler = StepProfiler(
            settings.profile, rank=settings.rank, activities=self._device.profiler_activities()
        )
        self._eos_token_ids = tuple(dict.fromkeys((*eos_token_ids, *c.eos_token_ids)))
        # the sampler and grammar guides of live sequences (sequence_sampling.py)
        self._sequences = SequenceSampling(
            c.vocab_size,
            self._device.torch_device,
            watermark_gamma=settings.watermark_gamma,
            watermark_delta=settings.watermark_delta,
            token_bytes=token_bytes,
            eos_token_ids=self._eos_token_ids,
        )
        self._warmed: frozenset[Shape] | None = None
        self._unwarmed: set[Shape] = set()
        logger.info(
            "model %s (%s, %s, %s) on %s, %d KV blocks of %d tokens",
            settings.model_id or loaded.source.path.name,
            c.model_type,
            self.implementation,
            settings.dtype,
            self._device.describe(),
            self._kv.num_blocks,
            settings.block_size,
        )

    # -- ModelRunner protocol --------------------------------------------------------

    @property
    def num_kv_blocks(self) -> int:
        return self._kv.num_blocks

    @property
    def block_size(self) -> int:
        return self._kv.block_size

    @property
    def num_unwarmed_shapes(self) -> int:
        """Distinct shapes executed after warmup that are not among the buckets it was given
        (should stay 0). Where shapes are static (HPU, CUDA) warmup ran every one of them;
        on the packed CPU, which compiles nothing, it ran a few representative ones and the
        other buckets count as warmed: their first step costs what any later one does."""
        return len(self._unwarmed)

    def warmup(
        self, shapes: Sequence[Shape], progress: WarmupProgress | None = None
    ) -> WarmupReport:
        """Runs every shape once where shapes are static, the representative ones on the
        packed CPU (see ``warmup.py``); skipped when ``warmup_enabled`` is off. The report
        counts the shapes it ran."""
        if not self._settings.warmup_enabled:
            logger.warning("Warmup is disabled (WARMUP_ENABLED=false): shapes compile on demand")
            return WarmupReport(num_shapes=0, seconds=0.0, num_kv_blocks=self.num_kv_blocks)
        static = self._device.needs_static_shapes
        run = shapes_to_warm(shapes, static=static)
        sizes = dummy_sizes(run, static=static)
        report = run_warmup(
            run,
            lambda shape: self._warm_shape(shape, sizes[shape]),
            progress=progress,
            num_kv_blocks=self.num_kv_blocks,
            num_graphs=lambda: self._step.num_graphs,
        )
        self._warmed = frozenset(shapes)
        return report

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> StepOutput:
        """Runs one plan: releases, then the prefill or decode items (see the module doc)."""
        with self._profiler.step():
            return self._execute(plan, record_shape=True)

    # -- RequestPreparer -------------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> Preparation:
        """Whether ``request`` may be prefilled without waiting: its grammar's index is
        compiled (on a background thread, started here if need be, within a deadline)."""
        if self._lora_index(request.adapter_id) is None:
            loaded = ", ".join(self._lora.ids) if self._lora else "none"
            return Preparation(
                ready=False,
                error=f"LoRA adapter {request.adapter_id!r} is not loaded (loaded: {loaded})",
            )
        return self._sequences.prepare_request(request)

    def wait_prepared(self, timeout_s: float) -> None:
        self._sequences.wait_prepared(timeout_s)

    # -- the rest of the public surface -----------------------------------------------

    def close(self) -> None:
        """Under a MEASURE ``QUANT_CONFIG``, writes INC's FP8 statistics; stops the grammar
        compile thread. Call it once, when no step runs any more (the group, and the other
        shards, are their starter's to stop: ``parallel.stop_shards``)."""
        self._sequences.close()
        if self._quantization is not None:
            self._quantization.finalize()

    @torch.inference_mode()
    def serve_shard(self) -> None:
        """Ranks > 0: runs each plan rank 0 sends (the forward pass only: rank 0 samples)
        until rank 0 says stop."""
        if self._group is None or self._group.rank == 0:
            raise ValueError("serve_shard is for ranks > 0 of a tensor-parallel runner")
        while (plan := self._group.receive_plan()) is not None:
            if plan.num_sequences:
                with self._profiler.step():  # PROF_RANKS names shard ranks too
                    self._forward(plan)

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def device(self) -> Device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def weights(self) -> str:
        """How the weights are held: dense, weight-only quantized (and why), or FP8."""
        if self._quantization is not None:  # Intel Neural Compressor's
            origin = "QUANT_CONFIG" if self._settings.quant_config else "--quantize fp8"
            return f"FP8 projections, dense LM head ({origin})"
        return "dense" if self._weights is None else self._weights.describe()

    @property
    def speculate(self) -> int:
        """Draft tokens a step may verify: ``--speculate``, else a Medusa model's heads."""
        return self._settings.speculate

    @property
    def kv_cache_dtype(self) -> torch.dtype:
        """What the KV blocks hold: the model's dtype, or FP8 (``--kv-cache-dtype``)."""
        return self._kv.keys[0].dtype

    @property
    def lora_adapters(self) -> tuple[str, ...]:
        """The ids of the loaded LoRA adapters, in ``--lora-adapters`` order."""
        return self._lora.ids if self._lora is not None else ()

    def _lora_index(self, adapter_id: str | None) -> int | None:
        if adapter_id is None:
            return 0
        return self._lora.index_of(adapter_id) if self._lora is not None else None

    @property
    def implementation(self) -> str:
        """Which code computes the model: a native family or transformers' (the fallback)."""
        return describe_implementation(self._model)

    @property
    def vocab_size(self) -> int:
        return self._config.vocab_size

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends generation: the ``eos_token_ids`` given, then the config's."""
        return self._eos_token_ids

    @property
    def kv_cache_bytes(self) -> int:
        return self._kv.num_bytes

    @property
    def unwarmed_shapes(self) -> frozenset[Shape]:
        """Shapes run since warmup that warmup never ran (what ``num_unwarmed_shapes`` counts)."""
        return frozenset(self._unwarmed)

    @torch.inference_mode()
    def compute_logits(self, plan: StepPlan, *, every_token: bool = False) -> Tensor:
        """Runs ``plan``'s forward pass (writing its KV) and returns float32 logits
        ``[num_sequences, vocab]`` of each sequence's last token, without sampling; with
        ``every_token``, those of every new prefill token, in plan order (teacher forcing)."""
        if every_token:  # the rows of prompt logprobs: what every rank's head computes
            items = tuple(msgspec.structs.replace(i, prompt_logprobs=True) for i in plan.prefill)
            plan = msgspec.structs.replace(plan, prefill=items)
        result = self._forward(plan)
        rows = result.prompt_logits
        return rows if every_token and rows is not None else result.logits  # decode: alike

    # -- internals --------------------------------------------------------------------

    def _release(self, request_ids: Sequence[int]) -> None:
        self._sequences.release(request_ids)
        if isinstance(self._model, RecomputingCausalLM):
            self._model.release(request_ids)

    def _record_shape(self, shape: Shape) -> None:
        if self._warmed is not None and shape not in self._warmed and shape not in self._unwarmed:
            self._unwarmed.add(shape)
            logger.warning("shape %s was not warmed up (%d so far)", shape, len(self._unwarmed))

    def _execute(self, plan: StepPlan, *, record_shape: bool) -> StepOutput:
        self._release(plan.released)
        if not plan.num_sequences:
            return StepOutput(step_id=plan.step_id, outputs=())
        if plan.shape is None:
            raise ValueError("a plan with sequences needs a shape")
        if record_shape:
            self._record_shape(plan.shape)
        # grammar masks are written on the host before the forward pass, to overlap the device
        step = self._sequences.prepare(plan)
        logits, hidden, inputs, prompt_logits = self._forward(plan)
        if is_speculative(plan):
            verified = choose_verified(
                self._sequences, step, plan.decode, logits, inputs.token_offsets
            )
            last_rows = [
                offset + len(out.extra)
                for offset, out in zip(inputs.token_offsets, verified, strict=True)
            ]
            drafted = with_drafts(self._medusa, verified, hidden, last_rows, self.speculate)
            return StepOutput(step_id=plan.step_id, outputs=drafted)
        result = self._sequences.sample(step, logits)
        prompt_logprobs = self._prompt_logprobs(plan, prompt_logits)
        failed = step.failed  # sequences failed alone: only their own request hears why
        outputs = tuple(
            SequenceOutput(request_id, 0, 0.0, error=failed[request_id])
            if request_id in failed
            else SequenceOutput(
                request_id=request_id,
                token_id=result.token_ids[i],
                logprob=result.logprobs[i],
                top_tokens=result.top_tokens[i],
                prompt_logprobs=prompt_logprobs[i],
            )
            for i, request_id in enumerate(step.request_ids)
        )
        last_rows = [int(row) for row in inputs.logits_index[: len(outputs)]]
        drafted = with_drafts(self._medusa, outputs, hidden, last_rows, self.speculate)
        return StepOutput(step_id=plan.step_id, outputs=drafted)

    def _prompt_logprobs(
        self, plan: StepPlan, logits: Tensor | None
    ) -> list[tuple[float | None, ...] | None]:
        """Per item: None, or one logprob per prompt token (None where no logits exist:
        the first token, and tokens whose predecessor came from the prefix cache), from
        ``_prompt_logits``'s rows."""
        out: list[tuple[float | None, ...] | None] = [None] * plan.num_sequences
        start = 0
        for i, item in enumerate(plan.prefill):
            if not item.prompt_logprobs or logits is None:
                continue
            cached = item.num_cached_tokens
            new_tokens = item.token_ids[cached:]
            rows = logits[start : start + len(new_tokens)]
            start += len(new_tokens)
            values = self._sequences.sampler.prompt_logprobs(rows, new_tokens)
            out[i] = ((None,) * cached + tuple(values))[: item.num_prompt_tokens]
        return out

    @torch.inference_mode()
    def _warm_shape(self, shape: Shape, size: DummySize) -> None:
        plan = dummy_plan(
            shape, block_size=self.block_size, num_kv_blocks=self.num_kv_blocks, size=size
        )
        self._sequences.add_dummy_decodes(plan.decode)
        self._execute(plan, record_shape=False)
        self._release([i.request_id for i in plan.prefill] + [d.request_id for d in plan.decode])
        self._device.synchronize()
