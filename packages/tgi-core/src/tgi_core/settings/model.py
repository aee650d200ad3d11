"""``Settings``: the one validated, frozen configuration, and the slices each component gets.

``Settings.from_sources(argv, environ)`` is the only reader of the environment in the whole
repository (``from_process`` hands it ``sys.argv`` and ``os.environ``). Precedence is
CLI > environment > default. Consumers never take ``Settings`` itself: they take their
slice (``scheduler()``, ``runner(rank)``, ``server()``), built here so that the slices agree
(same block size, same token limits). Attribute names, flags and help are in the table
(``fields.py``); a test keeps this class and the table in step.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tgi_core.settings.checks import check, check_refused
from tgi_core.settings.errors import SettingsError
from tgi_core.settings.fields import FIELDS
from tgi_core.settings.lora import parse_lora_adapter
from tgi_core.settings.parse import read_sources
from tgi_core.settings.resolve import HostInfo, resolve
from tgi_core.settings.slices import (
    DeviceName,
    DType,
    ImageLimits,
    ProfileSettings,
    QueuePolicy,
    RunnerDType,
    RunnerSettings,
    SchedulerSettings,
    ServerSettings,
    ValidationLimits,
)

__all__ = ["Settings"]

# The device chooses: TGI-Gaudi's BF16, float32 on a CPU without native bf16.
_DEFAULT_DTYPE: RunnerDType = "auto"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every setting, resolved and cross-checked. See ``docs/settings.md`` for each one."""

    # Model
    model_id: str
    revision: str | None
    dtype: DType | None
    quantize: str | None
    kv_cache_dtype: str | None
    trust_remote_code: bool
    speculate: int | None
    rope_scaling: str | None
    rope_factor: float | None
    lora_adapters: tuple[str, ...]
    tokenizer_config_path: str | None
    huggingface_hub_cache: str | None
    weights_cache_override: str | None
    hf_token: str | None = field(repr=False)
    hf_hub_offline: bool
    quant_config: str | None
    # Hardware and sharding
    device: DeviceName
    num_threads: int | None
    sharded: bool | None
    num_shard: int
    master_addr: str
    master_port: int
    shard_uds_path: str
    cuda_memory_fraction: float
    cuda_graphs: tuple[int, ...]
    disable_custom_kernels: bool
    # Request limits
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int
    max_top_n_tokens: int
    max_input_tokens: int
    max_total_tokens: int
    max_client_batch_size: int
    validation_workers: int
    payload_limit: int
    max_image_fetch_size: int
    max_images_per_request: int
    max_image_pixels: int
    image_fetch_timeout: float
    image_fetch_allow_private: bool
    disable_grammar_support: bool
    enable_prefill_logprobs: bool
    watermark_gamma: float
    watermark_delta: float
    # Batching and scheduling
    waiting_served_ratio: float
    max_batch_prefill_tokens: int
    max_batch_total_tokens: int | None
    max_waiting_tokens: int
    max_batch_size: int
    queue_policy: QueuePolicy
    queue_threshold_ms: int
    prefix_caching: bool
    block_size: int
    num_kv_blocks: int | None
    ignore_eos_token: bool
    # Gaudi buckets and graphs
    batch_bucket_size: int
    prefill_batch_bucket_size: int
    pad_sequence_to_multiple_of: int
    base_image_tokens: int
    enable_hpu_graph: bool
    limit_hpu_graph: bool
    use_flash_attention: bool
    flash_attention_recompute: bool
    warmup_enabled: bool
    skip_tokenizer_in_tgi: bool
    # Profiling
    prof_waitstep: int
    prof_warmupstep: int
    prof_step: int
    prof_path: str
    prof_ranks: tuple[int, ...]
    prof_record_shapes: bool
    # HTTP server and logging
    hostname: str
    port: int
    prometheus_port: int
    workers: int
    api_key: str | None = field(repr=False)
    cors_allow_origin: tuple[str, ...]
    json_output: bool
    log_level: str
    graceful_termination_timeout: int
    compute_type: str
    engine_step_timeout: float
    engine_socket: str | None
    metrics_dir: str | None
    otlp_endpoint: str | None
    otlp_service_name: str
    ngrok: bool
    ngrok_authtoken: str | None = field(repr=False)
    ngrok_edge: str | None
    usage_stats: Literal["on", "off", "no-stack"]
    env: bool

    @classmethod
    def from_sources(
        cls,
        argv: Sequence[str],
        environ: Mapping[str, str],
        *,
        host: HostInfo | None = None,
    ) -> Settings:
        """Parse ``argv`` (without the program name) and ``environ``; CLI > env > default.

        Args:
            argv: the launcher's arguments, e.g. ``["--port", "8080"]``.
            environ: the environment, e.g. ``os.environ`` (only read, never changed).
            host: installation facts for the defaults; detected when None.

        Raises:
            SettingsError: a bad value, an inconsistent combination or a value this server
                refuses (one-line message).
            HelpRequested: ``-h/--help`` or ``-V/--version`` was given.
        """
        from_cli, from_env = read_sources(argv, environ)
        values = resolve({**from_env, **from_cli}, environ, host or HostInfo.detect())
        settings = cls(**values)
        check(settings)
        check_refused(from_cli, from_env, environ)
        return settings

    @classmethod
    def from_process(cls, argv: Sequence[str] | None = None) -> Settings:
        """``from_sources`` over this process's arguments (``sys.argv[1:]``) and environment."""
        return cls.from_sources(sys.argv[1:] if argv is None else argv, os.environ)

    def to_environ(self) -> dict[str, str]:
        """These settings as environment variables, so a child process rebuilds them.

        ``Settings.from_sources([], settings.to_environ()) == settings`` (``--env`` aside,
        which has no variable). Holds the secrets (tokens, API key) that were set.
        """
        environ: dict[str, str] = {}
        for spec in FIELDS:
            value = getattr(self, spec.name) if spec.stored else None
            if value is None or value == () or not spec.env_names:
                continue
            environ[spec.env_names[0]] = spec.kind.format(value)
        return environ

    def child_environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a child process (engine, HTTP workers): this process's, with
        every settings variable replaced by these resolved settings, plus ``extra``.

        The rest passes through untouched (PATH, HOME, HF_HOME, device variables...), so the
        child rebuilds exactly these settings with ``Settings.from_process()``.
        """
        environ = dict(os.environ)
        for spec in FIELDS:
            for name in spec.env_names:
                environ.pop(name, None)
        environ.update(self.to_environ())
        environ.update(extra or {})
        return environ

    def scheduler(self) -> SchedulerSettings:
        """The scheduler's slice: limits, buckets, block size and queue policy."""
        return SchedulerSettings(
            max_concurrent_requests=self.max_concurrent_requests,
            max_batch_size=self.max_batch_size,
            max_batch_prefill_tokens=self.max_batch_prefill_tokens,
            max_batch_total_tokens=self.max_batch_total_tokens,
            max_input_tokens=self.max_input_tokens,
            max_total_tokens=self.max_total_tokens,
            waiting_served_ratio=self.waiting_served_ratio,
            max_waiting_tokens=self.max_waiting_tokens,
            batch_bucket_size=self.batch_bucket_size,
            prefill_batch_bucket_size=self.prefill_batch_bucket_size,
            pad_sequence_to_multiple_of=self.pad_sequence_to_multiple_of,
            block_size=self.block_size,
            queue_threshold_ms=self.queue_threshold_ms,
            queue_policy=self.queue_policy,
            prefix_caching=self.prefix_caching,
            ignore_eos_token=self.ignore_eos_token,
            speculate=self.speculate or 0,
        )

    def runner(self, rank: int = 0) -> RunnerSettings:
        """The model runner's slice for shard ``rank`` (0 <= rank < ``num_shard``).

        Raises:
            SettingsError: ``rank`` is not a shard of this deployment.
        """
        if not 0 <= rank < self.num_shard:
            raise SettingsError(f"rank {rank} is out of range for --num-shard {self.num_shard}")
        rope_scaling, rope_factor = self._rope()
        return RunnerSettings(
            model_id=self.model_id,
            revision=self.revision,
            dtype=self.dtype or _DEFAULT_DTYPE,
            device=self.device,
            block_size=self.block_size,
            max_batch_size=self.max_batch_size,
            max_input_tokens=self.max_input_tokens,
            max_total_tokens=self.max_total_tokens,
            max_batch_total_tokens=self.max_batch_total_tokens,
            num_kv_blocks=self.num_kv_blocks,
            memory_fraction=self.cuda_memory_fraction,
            enable_hpu_graph=self.enable_hpu_graph,
            limit_hpu_graph=self.limit_hpu_graph,
            use_flash_attention=self.use_flash_attention,
            flash_attention_recompute=self.flash_attention_recompute,
            warmup_enabled=self.warmup_enabled,
            quant_config=self.quant_config,
            quantize=self.quantize,
            cuda_graphs=self.cuda_graphs,
            kv_cache_dtype=self.kv_cache_dtype,
            hf_token=self.hf_token,
            huggingface_hub_cache=self.huggingface_hub_cache,
            num_shard=self.num_shard,
            rank=rank,
            master_addr=self.master_addr,
            master_port=self.master_port,
            num_threads=self.num_threads,
            rope_scaling=rope_scaling,
            rope_factor=rope_factor,
            profile=self.profile(),
            watermark_gamma=self.watermark_gamma,
            watermark_delta=self.watermark_delta,
            base_image_tokens=self.base_image_tokens,
            hf_hub_offline=self.hf_hub_offline,
            disable_custom_kernels=self.disable_custom_kernels,
            trust_remote_code=self.trust_remote_code,
            lora_adapters=self.lora_adapters,
            speculate=self.speculate or 0,
        )

    def server(self) -> ServerSettings:
        """The HTTP front end's slice, with the request limits validation enforces.

        ``hostname`` is the address to bind: as TGI's router does, anything that is not an
        IP address (Docker sets HOSTNAME to the container's name) binds 0.0.0.0.
        """
        return ServerSettings(
            model_id=self.model_id,
            hostname=self.hostname if _is_ip_address(self.hostname) else "0.0.0.0",
            port=self.port,
            prometheus_port=self.prometheus_port,
            workers=self.workers,
            api_key=self.api_key,
            cors_allow_origin=self.cors_allow_origin,
            payload_limit=self.payload_limit,
            json_output=self.json_output,
            log_level=self.log_level,
            graceful_termination_timeout=self.graceful_termination_timeout,
            max_concurrent_requests=self.max_concurrent_requests,
            validation_workers=self.validation_workers,
            tokenizer_config_path=self.tokenizer_config_path,
            skip_tokenizer_in_tgi=self.skip_tokenizer_in_tgi,
            compute_type=self.compute_type,
            otlp_endpoint=self.otlp_endpoint,
            otlp_service_name=self.otlp_service_name,
            revision=self.revision,
            hf_token=self.hf_token,
            limits=self.validation_limits(),
            images=ImageLimits(
                max_image_fetch_size=self.max_image_fetch_size,
                max_images_per_request=self.max_images_per_request,
                max_image_pixels=self.max_image_pixels,
                image_fetch_timeout=self.image_fetch_timeout,
                image_fetch_allow_private=self.image_fetch_allow_private,
            ),
            engine_socket=self.engine_socket,
            metrics_dir=self.metrics_dir,
        )

    def validation_limits(self) -> ValidationLimits:
        """The per-request limits (TGI router's Validation)."""
        return ValidationLimits(
            max_best_of=self.max_best_of,
            max_stop_sequences=self.max_stop_sequences,
            max_top_n_tokens=self.max_top_n_tokens,
            max_input_tokens=self.max_input_tokens,
            max_total_tokens=self.max_total_tokens,
            max_client_batch_size=self.max_client_batch_size,
            disable_grammar_support=self.disable_grammar_support,
            enable_prefill_logprobs=self.enable_prefill_logprobs,
            adapter_ids=tuple(
                adapter.id
                for entry in self.lora_adapters
                if (adapter := parse_lora_adapter(entry)) is not None
            ),
        )

    def profile(self) -> ProfileSettings:
        """The torch profiler schedule (PROF_* variables)."""
        return ProfileSettings(
            wait_steps=self.prof_waitstep,
            warmup_steps=self.prof_warmupstep,
            active_steps=self.prof_step,
            path=self.prof_path,
            ranks=self.prof_ranks,
            record_shapes=self.prof_record_shapes,
        )

    def _rope(self) -> tuple[str | None, float | None]:
        """TGI's launcher rule: a factor alone is linear; a scaling alone has factor 1.0."""
        if self.rope_scaling is None and self.rope_factor is None:
            return None, None
        return self.rope_scaling or "linear", self.rope_factor or 1.0


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
