"""``Settings``: the one validated, frozen configuration, and the slices each component gets.

``Settings.from_sources(argv, environ)`` is the only reader of the environment in the whole
repository (``from_process`` hands it ``sys.argv`` and ``os.environ``). Precedence is
CLI > environment > default. The launcher reads them once and hands its children the
result encoded in one variable (``child_environ``), which they decode (``from_parent``).
Consumers never take ``Settings`` itself: they take their slice (``scheduler()``,
``runner(rank)``, ``server()``), built here so that the slices agree (same block size, same
token limits): a slice field that a setting fills as it is comes from the table's ``to``
(``Spec``), the rest is computed here. Attribute names, flags and help are in the table
(``fields.py``); tests keep this class and the slices in step with it.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from tgi_core.settings.checks import check, check_refused
from tgi_core.settings.errors import SettingsError
from tgi_core.settings.fields import FIELDS, ROUTES
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

__all__ = ["SETTINGS_VARIABLE", "Settings"]

# The launcher hands its children the resolved settings in this one variable (``to_json``).
SETTINGS_VARIABLE = "TGI_SETTINGS"

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
    gguf_weights: str
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
    nnodes: int
    node_rank: int
    rendezvous_timeout: float
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

    @classmethod
    def from_parent(cls, argv: Sequence[str] | None = None) -> Settings:
        """In a child of the launcher (the engine, Gunicorn and its workers): the settings
        it resolved, decoded from ``TGI_SETTINGS``; without that variable (a child started by
        hand), ``from_process(argv)``.

        Raises:
            SettingsError: ``TGI_SETTINGS`` does not hold settings, or comes with flags.
            HelpRequested: as ``from_process``, without ``TGI_SETTINGS``.
        """
        encoded = os.environ.get(SETTINGS_VARIABLE)
        if not encoded:
            return cls.from_process(argv)
        if argv:
            raise SettingsError(f"{SETTINGS_VARIABLE} holds the settings: give no flags")
        return cls.from_json(encoded)

    def to_json(self) -> str:
        """These settings as one JSON object (secrets included): ``from_json`` reads it."""
        return msgspec.json.encode(self).decode()

    @classmethod
    def from_json(cls, text: str) -> Settings:
        """Settings that ``to_json`` wrote. Raises ``SettingsError`` (one line) otherwise."""
        try:
            return msgspec.json.decode(text, type=cls)
        except msgspec.DecodeError as error:
            raise SettingsError(f"{SETTINGS_VARIABLE} holds no valid settings: {error}") from None

    def to_environ(self) -> dict[str, str]:
        """These settings as environment variables, which ``from_sources`` reads back.

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
        """The environment of a child process (engine, HTTP workers): this process's without
        its settings variables, plus these settings in ``TGI_SETTINGS`` (``from_parent``),
        the variables libraries read themselves (``Spec.exported``), resolved, and ``extra``.

        The rest passes through untouched (PATH, HOME, HF_HOME, device variables...).
        """
        environ = dict(os.environ)
        for spec in FIELDS:
            for name in spec.env_names:
                environ.pop(name, None)
        exported = {spec.env_names[0] for spec in FIELDS if spec.exported}
        environ.update((k, v) for k, v in self.to_environ().items() if k in exported)
        environ[SETTINGS_VARIABLE] = self.to_json()
        environ.update(extra or {})
        return environ

    def scheduler(self) -> SchedulerSettings:
        """The scheduler's slice: limits, buckets, block size and queue policy."""
        return SchedulerSettings(**self._routed("scheduler"), speculate=self.speculate or 0)

    def runner(self, rank: int = 0) -> RunnerSettings:
        """The model runner's slice for shard ``rank`` (0 <= rank < ``num_shard``).

        Raises:
            SettingsError: ``rank`` is not a shard of this deployment.
        """
        if not 0 <= rank < self.num_shard:
            raise SettingsError(f"rank {rank} is out of range for --num-shard {self.num_shard}")
        rope_scaling, rope_factor = self._rope()
        return RunnerSettings(
            **self._routed("runner"),
            dtype=self.dtype or _DEFAULT_DTYPE,
            rank=rank,
            rope_scaling=rope_scaling,
            rope_factor=rope_factor,
            profile=self.profile(),
            speculate=self.speculate or 0,
        )

    def server(self) -> ServerSettings:
        """The HTTP front end's slice, with the request limits validation enforces.

        ``hostname`` is the address to bind: as TGI's router does, anything that is not an
        IP address (Docker sets HOSTNAME to the container's name) binds 0.0.0.0.
        """
        return ServerSettings(
            **self._routed("server"),
            hostname=self.hostname if _is_ip_address(self.hostname) else "0.0.0.0",
            limits=self.validation_limits(),
            images=ImageLimits(**self._routed("images")),
        )

    def validation_limits(self) -> ValidationLimits:
        """The per-request limits (TGI router's Validation)."""
        return ValidationLimits(
            **self._routed("limits"),
            adapter_ids=tuple(
                adapter.id
                for entry in self.lora_adapters
                if (adapter := parse_lora_adapter(entry)) is not None
            ),
        )

    def profile(self) -> ProfileSettings:
        """The torch profiler schedule (PROF_* variables)."""
        return ProfileSettings(**self._routed("profile"))

    def _routed(self, target: str) -> dict[str, Any]:
        """The fields of slice ``target`` that settings fill as they are (the table's ``to``)."""
        return {field: getattr(self, name) for name, field in ROUTES[target]}

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
