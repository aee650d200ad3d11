"""The slices of the settings that each component receives.

The full ``Settings`` object (built from CLI flags and environment variables in this package)
hands each consumer only its slice: the scheduler gets ``SchedulerSettings``, the runner
``RunnerSettings``, the server ``ServerSettings``. Tests build slices directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

QueuePolicy = Literal["priority", "fifo"]
DeviceName = Literal["auto", "cpu", "cuda", "hpu"]
DType = Literal["bfloat16", "float32", "float16"]
# "auto": the device chooses (bfloat16, or float32 on a CPU without native bf16).
RunnerDType = Literal["auto", "bfloat16", "float32", "float16"]


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """Limits and buckets of the continuous-batching scheduler (TGI's router + Gaudi buckets)."""

    max_concurrent_requests: int = 128
    max_batch_size: int = 32
    max_batch_prefill_tokens: int = 4096
    max_batch_total_tokens: int | None = None
    max_input_tokens: int = 4095
    max_total_tokens: int = 4096
    waiting_served_ratio: float = 0.3
    max_waiting_tokens: int = 20
    batch_bucket_size: int = 8
    prefill_batch_bucket_size: int = 4
    pad_sequence_to_multiple_of: int = 128
    block_size: int = 128
    queue_threshold_ms: int = 120
    queue_policy: QueuePolicy = "priority"
    prefix_caching: bool = True
    max_generation_chunk: int = 1024
    ignore_eos_token: bool = False  # TEXT_GENERATION_SERVER_IGNORE_EOS_TOKEN (benchmark mode)
    # The shortest prefill length bucket. A vision-language model's is BASE_IMAGE_TOKENS: as
    # in TGI-Gaudi, its prefills are warmed up (and padded) from there to max_input_tokens.
    min_prefill_len: int = 1
    # --speculate: draft tokens proposed per decode step (n-gram lookup over the sequence)
    speculate: int = 0


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    """torch.profiler schedule (TGI-Gaudi's PROF_* variables). ``active_steps`` 0 = off."""

    wait_steps: int = 0
    warmup_steps: int = 0
    active_steps: int = 0
    path: str = "/tmp/hpu_profile"
    ranks: tuple[int, ...] = (0,)
    record_shapes: bool = False

    @property
    def enabled(self) -> bool:
        return self.active_steps > 0


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """What the model runner needs: the model, the device, the shapes and the Gaudi switches."""

    model_id: str = ""
    revision: str | None = None
    dtype: RunnerDType = "auto"
    device: DeviceName = "auto"
    block_size: int = 128
    max_batch_size: int = 32
    max_input_tokens: int = 4095
    max_total_tokens: int = 4096
    max_batch_total_tokens: int | None = None
    num_kv_blocks: int | None = None
    memory_fraction: float = 1.0
    enable_hpu_graph: bool = True
    limit_hpu_graph: bool = True
    use_flash_attention: bool = True
    flash_attention_recompute: bool = True
    warmup_enabled: bool = True
    quant_config: str | None = None
    quantize: str | None = None
    kv_cache_dtype: str | None = None
    hf_token: str | None = None
    huggingface_hub_cache: str | None = None
    num_shard: int = 1
    rank: int = 0
    master_addr: str = "localhost"
    master_port: int = 29500
    num_threads: int | None = None
    # CUDA: decode batch sizes captured as graphs (TGI's --cuda-graphs); 0 or () none.
    cuda_graphs: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    rope_scaling: str | None = None
    rope_factor: float | None = None
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    watermark_gamma: float = 0.5
    watermark_delta: float = 2.0
    base_image_tokens: int = 2048
    hf_hub_offline: bool = False  # load from the hub's cache only (HF_HUB_OFFLINE)
    disable_custom_kernels: bool = False  # the CPU backend's native kernels off
    trust_remote_code: bool = False  # run a checkpoint's own code (transformers fallback)
    lora_adapters: tuple[str, ...] = ()  # --lora-adapters entries (settings/lora.py)
    speculate: int = 0  # --speculate: decode steps verify this many draft tokens at most


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """The request limits validation enforces (TGI router's Validation)."""

    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_input_tokens: int = 4095
    max_total_tokens: int = 4096
    max_client_batch_size: int = 4
    max_generation_chunk: int = 1024
    disable_grammar_support: bool = False
    enable_prefill_logprobs: bool = False
    adapter_ids: tuple[str, ...] = ()  # the LoRA adapters a request may name


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What a vision model's front end allows of a request's images (ours: TGI has only
    ``--max-image-fetch-size``, at 1 GiB, and no address, count, pixel or time limit)."""

    max_image_fetch_size: int = 20 * 1024 * 1024  # bytes of one image, fetched or data URL
    max_images_per_request: int = 8
    max_image_pixels: int = 7680 * 4320  # an 8K UHD frame
    image_fetch_timeout: float = 10.0  # seconds for all of a request's fetches together
    image_fetch_allow_private: bool = False  # loopback, private, link-local... addresses


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the HTTP front end and the launcher need."""

    model_id: str = ""
    hostname: str = "0.0.0.0"
    port: int = 3000
    prometheus_port: int = 9000
    workers: int = 1
    api_key: str | None = None
    cors_allow_origin: tuple[str, ...] = ()
    payload_limit: int = 2_000_000
    json_output: bool = False
    log_level: str = "info"
    graceful_termination_timeout: int = 90
    max_concurrent_requests: int = 128
    validation_workers: int = 2
    tokenizer_config_path: str | None = None
    skip_tokenizer_in_tgi: bool = False
    compute_type: str = "cpu+optimized"
    otlp_endpoint: str | None = None
    otlp_service_name: str = "text-generation-inference.router"
    revision: str | None = None
    hf_token: str | None = None
    limits: ValidationLimits = field(default_factory=ValidationLimits)
    images: ImageLimits = field(default_factory=ImageLimits)
    engine_socket: str | None = None
    metrics_dir: str | None = None
