"""The slices of the settings that each component receives.

The full ``Settings`` object (built from CLI flags and environment variables in this package)
hands each consumer only its slice: the scheduler gets ``SchedulerSettings``, the runner
``RunnerSettings``, the server ``ServerSettings``. Tests build slices directly.

A field that a setting fills as it is (``Spec.to``) takes the table's default
(``default_of``); one whose setting's default is derived (``resolve.py``) takes what it
resolves to on Gaudi. The other fields are computed by ``Settings`` or are no setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tgi_core.settings.fields import default_of
from tgi_core.settings.resolve import (
    DEFAULT_MAX_BATCH_PREFILL_TOKENS,
    DEFAULT_MAX_TOTAL_TOKENS,
    HPU_BLOCK_SIZE,
)

QueuePolicy = Literal["priority", "fifo"]
DeviceName = Literal["auto", "cpu", "cuda", "hpu"]
DType = Literal["bfloat16", "float32", "float16"]
# "auto": the device chooses (bfloat16, or float32 on a CPU without native bf16).
RunnerDType = Literal["auto", "bfloat16", "float32", "float16"]


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """Limits and buckets of the continuous-batching scheduler (TGI's router + Gaudi buckets)."""

    max_concurrent_requests: int = default_of("max_concurrent_requests")
    max_batch_size: int = default_of("max_batch_size")
    max_batch_prefill_tokens: int = DEFAULT_MAX_BATCH_PREFILL_TOKENS
    max_batch_total_tokens: int | None = default_of("max_batch_total_tokens")
    max_input_tokens: int = DEFAULT_MAX_TOTAL_TOKENS - 1
    max_total_tokens: int = DEFAULT_MAX_TOTAL_TOKENS
    waiting_served_ratio: float = default_of("waiting_served_ratio")
    max_waiting_tokens: int = default_of("max_waiting_tokens")
    batch_bucket_size: int = default_of("batch_bucket_size")
    prefill_batch_bucket_size: int = default_of("prefill_batch_bucket_size")
    pad_sequence_to_multiple_of: int = default_of("pad_sequence_to_multiple_of")
    block_size: int = HPU_BLOCK_SIZE
    queue_threshold_ms: int = default_of("queue_threshold_ms")
    queue_policy: QueuePolicy = default_of("queue_policy")
    prefix_caching: bool = default_of("prefix_caching")
    max_generation_chunk: int = 1024
    ignore_eos_token: bool = default_of("ignore_eos_token")
    # The shortest prefill length bucket. A vision-language model's is BASE_IMAGE_TOKENS: as
    # in TGI-Gaudi, its prefills are warmed up (and padded) from there to max_input_tokens.
    min_prefill_len: int = 1
    # --speculate: draft tokens proposed per decode step (n-gram lookup over the sequence)
    speculate: int = 0


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    """torch.profiler schedule (TGI-Gaudi's PROF_* variables). ``active_steps`` 0 = off."""

    wait_steps: int = default_of("prof_waitstep")
    warmup_steps: int = default_of("prof_warmupstep")
    active_steps: int = default_of("prof_step")
    path: str = default_of("prof_path")
    ranks: tuple[int, ...] = default_of("prof_ranks")
    record_shapes: bool = default_of("prof_record_shapes")

    @property
    def enabled(self) -> bool:
        return self.active_steps > 0


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """What the model runner needs: the model, the device, the shapes and the Gaudi switches."""

    model_id: str = ""
    revision: str | None = default_of("revision")
    dtype: RunnerDType = "auto"
    device: DeviceName = default_of("device")
    block_size: int = HPU_BLOCK_SIZE
    max_batch_size: int = default_of("max_batch_size")
    max_input_tokens: int = DEFAULT_MAX_TOTAL_TOKENS - 1
    max_total_tokens: int = DEFAULT_MAX_TOTAL_TOKENS
    max_batch_total_tokens: int | None = default_of("max_batch_total_tokens")
    num_kv_blocks: int | None = default_of("num_kv_blocks")
    memory_fraction: float = default_of("cuda_memory_fraction")
    enable_hpu_graph: bool = default_of("enable_hpu_graph")
    limit_hpu_graph: bool = default_of("limit_hpu_graph")
    use_flash_attention: bool = default_of("use_flash_attention")
    flash_attention_recompute: bool = default_of("flash_attention_recompute")
    warmup_enabled: bool = default_of("warmup_enabled")
    quant_config: str | None = default_of("quant_config")
    quantize: str | None = default_of("quantize")
    gguf_weights: str = default_of("gguf_weights")
    kv_cache_dtype: str | None = default_of("kv_cache_dtype")
    hf_token: str | None = default_of("hf_token")
    huggingface_hub_cache: str | None = default_of("huggingface_hub_cache")
    num_shard: int = 1
    rank: int = 0
    master_addr: str = default_of("master_addr")
    master_port: int = default_of("master_port")
    nnodes: int = default_of("nnodes")  # the ranks split evenly: node n holds a block of them
    rendezvous_timeout: float = default_of("rendezvous_timeout")
    collective_timeout: float = default_of("engine_step_timeout")
    num_threads: int | None = default_of("num_threads")
    # CUDA: decode batch sizes captured as graphs (TGI's --cuda-graphs); 0 or () none.
    cuda_graphs: tuple[int, ...] = default_of("cuda_graphs")
    rope_scaling: str | None = None
    rope_factor: float | None = None
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    watermark_gamma: float = default_of("watermark_gamma")
    watermark_delta: float = default_of("watermark_delta")
    base_image_tokens: int = default_of("base_image_tokens")
    hf_hub_offline: bool = default_of("hf_hub_offline")
    disable_custom_kernels: bool = default_of("disable_custom_kernels")
    trust_remote_code: bool = default_of("trust_remote_code")
    lora_adapters: tuple[str, ...] = default_of("lora_adapters")
    speculate: int = 0  # --speculate: decode steps verify this many draft tokens at most

    @property
    def ranks_per_node(self) -> int:
        return self.num_shard // self.nnodes

    @property
    def node_rank(self) -> int:
        """The node holding this rank: node n holds ranks n * ranks_per_node onwards."""
        return self.rank // self.ranks_per_node

    @property
    def local_rank(self) -> int:
        """This rank's place on its node: the index of its device there."""
        return self.rank % self.ranks_per_node


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """The request limits validation enforces (TGI router's Validation)."""

    max_best_of: int = default_of("max_best_of")
    max_stop_sequences: int = default_of("max_stop_sequences")
    max_top_n_tokens: int = default_of("max_top_n_tokens")
    max_input_tokens: int = DEFAULT_MAX_TOTAL_TOKENS - 1
    max_total_tokens: int = DEFAULT_MAX_TOTAL_TOKENS
    max_client_batch_size: int = default_of("max_client_batch_size")
    max_generation_chunk: int = 1024
    disable_grammar_support: bool = default_of("disable_grammar_support")
    enable_prefill_logprobs: bool = default_of("enable_prefill_logprobs")
    adapter_ids: tuple[str, ...] = ()  # the LoRA adapters a request may name


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What a vision model's front end allows of a request's images (ours: TGI has only
    ``--max-image-fetch-size``, at 1 GiB, and no address, count, pixel or time limit)."""

    max_image_fetch_size: int = default_of("max_image_fetch_size")
    max_images_per_request: int = default_of("max_images_per_request")
    max_image_pixels: int = default_of("max_image_pixels")
    image_fetch_timeout: float = default_of("image_fetch_timeout")
    image_fetch_allow_private: bool = default_of("image_fetch_allow_private")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the HTTP front end and the launcher need."""

    model_id: str = ""
    hostname: str = default_of("hostname")
    port: int = default_of("port")
    prometheus_port: int = default_of("prometheus_port")
    workers: int = default_of("workers")
    api_key: str | None = default_of("api_key")
    cors_allow_origin: tuple[str, ...] = default_of("cors_allow_origin")
    payload_limit: int = default_of("payload_limit")
    json_output: bool = default_of("json_output")
    log_level: str = default_of("log_level")
    graceful_termination_timeout: int = default_of("graceful_termination_timeout")
    max_concurrent_requests: int = default_of("max_concurrent_requests")
    validation_workers: int = default_of("validation_workers")
    tokenizer_config_path: str | None = default_of("tokenizer_config_path")
    skip_tokenizer_in_tgi: bool = default_of("skip_tokenizer_in_tgi")
    compute_type: str = "cpu+optimized"
    otlp_endpoint: str | None = default_of("otlp_endpoint")
    otlp_service_name: str = default_of("otlp_service_name")
    revision: str | None = default_of("revision")
    hf_token: str | None = default_of("hf_token")
    limits: ValidationLimits = field(default_factory=ValidationLimits)
    images: ImageLimits = field(default_factory=ImageLimits)
    engine_socket: str | None = default_of("engine_socket")
    metrics_dir: str | None = default_of("metrics_dir")
