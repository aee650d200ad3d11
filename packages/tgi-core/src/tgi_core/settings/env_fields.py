"""The environment-only settings: TGI-Gaudi's variables and the server-side ones TGI reads.

These have no CLI flag in TGI, so they have none here either (``docker run -e NAME=value``).
The launcher flags are in ``fields.py``; ``FIELDS`` there joins both tables.
"""

from __future__ import annotations

from tgi_core.settings.kinds import (
    BOOL,
    INT_LIST,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    TEXT,
    choice,
)
from tgi_core.settings.spec import BATCHING, GAUDI, MODEL, PROFILING, SERVER, Spec

__all__ = ["ENV_FIELDS"]

_HUB = (
    Spec(
        "hf_token",
        MODEL,
        TEXT,
        None,
        "Hugging Face token for gated models.",
        flag=False,
        envs=("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN"),
        secret=True,
        exported=True,
        to=("runner", "server"),
    ),
    Spec(
        "hf_hub_offline",
        MODEL,
        BOOL,
        False,
        "Never contact the hub; load from the cache only.",
        flag=False,
        exported=True,
        to=("runner",),
    ),
    Spec(
        "quant_config",
        MODEL,
        TEXT,
        None,
        "Intel Neural Compressor FP8 config, e.g. ./quantization_config/maxabs_quant.json.",
        flag=False,
        to=("runner",),
    ),
)

_SCHEDULING = (
    Spec(
        "queue_threshold_ms",
        BATCHING,
        NON_NEGATIVE_INT,
        120,
        "Age beyond which a queued request is overdue and served first (priority queue).",
        flag=False,
        to=("scheduler",),
    ),
    Spec(
        "prefix_caching",
        BATCHING,
        BOOL,
        True,
        "Reuse the KV-cache blocks of a prompt prefix already computed.",
        flag=False,
        to=("scheduler",),
    ),
    Spec(
        "block_size",
        BATCHING,
        POSITIVE_INT,
        None,
        "Tokens per KV-cache block.",
        flag=False,
        default_doc="128 on hpu, else 16",
        to=("scheduler", "runner"),
    ),
    Spec(
        "ignore_eos_token",
        BATCHING,
        BOOL,
        False,
        "Keep generating past the EOS token (benchmark mode).",
        flag=False,
        envs=("TEXT_GENERATION_SERVER_IGNORE_EOS_TOKEN",),
        to=("scheduler",),
    ),
)

_GAUDI = (
    Spec(
        "batch_bucket_size",
        GAUDI,
        POSITIVE_INT,
        8,
        "Decode batch sizes are rounded up to a multiple of this (fewer cached graphs).",
        flag=False,
        to=("scheduler",),
    ),
    Spec(
        "prefill_batch_bucket_size",
        GAUDI,
        POSITIVE_INT,
        4,
        "Prefill batch sizes are rounded up to a multiple of this (fewer cached graphs).",
        flag=False,
        to=("scheduler",),
    ),
    Spec(
        "pad_sequence_to_multiple_of",
        GAUDI,
        POSITIVE_INT,
        128,
        "Prefill lengths are padded to a multiple of this.",
        flag=False,
        to=("scheduler",),
    ),
    Spec(
        "base_image_tokens",
        GAUDI,
        POSITIVE_INT,
        2048,
        "The smallest VLM prefill bucket, in tokens.",
        flag=False,
        to=("runner",),
    ),
    Spec(
        "enable_hpu_graph",
        GAUDI,
        BOOL,
        True,
        "Use HPU graphs (crucial for speed).",
        flag=False,
        to=("runner",),
    ),
    Spec(
        "limit_hpu_graph",
        GAUDI,
        BOOL,
        True,
        "Skip HPU graphs for prefill to save memory (for long sequences).",
        flag=False,
        to=("runner",),
    ),
    Spec(
        "use_flash_attention",
        GAUDI,
        BOOL,
        True,
        "Use Habana's fused scaled-dot-product attention where the model supports it.",
        flag=False,
        to=("runner",),
    ),
    Spec(
        "flash_attention_recompute",
        GAUDI,
        BOOL,
        True,
        "Run fused attention in recompute mode for the first token.",
        flag=False,
        to=("runner",),
    ),
    Spec(
        "warmup_enabled",
        GAUDI,
        BOOL,
        True,
        "Compile every bucket shape at start-up: a longer start, no compiles while serving.",
        flag=False,
        to=("runner",),
    ),
    Spec(
        "skip_tokenizer_in_tgi",
        GAUDI,
        BOOL,
        False,
        "Inputs are comma-separated token ids and outputs are ids, not text.",
        flag=False,
        to=("server",),
    ),
)

_PROFILING = (
    Spec(
        "prof_waitstep",
        PROFILING,
        NON_NEGATIVE_INT,
        0,
        "Profiler wait steps.",
        flag=False,
        to=("profile.wait_steps",),
    ),
    Spec(
        "prof_warmupstep",
        PROFILING,
        NON_NEGATIVE_INT,
        0,
        "Profiler warmup steps.",
        flag=False,
        to=("profile.warmup_steps",),
    ),
    Spec(
        "prof_step",
        PROFILING,
        NON_NEGATIVE_INT,
        0,
        "Profiler active steps; 0 disables profiling.",
        flag=False,
        to=("profile.active_steps",),
    ),
    Spec(
        "prof_path",
        PROFILING,
        TEXT,
        "/tmp/hpu_profile",
        "The profile trace folder.",
        flag=False,
        to=("profile.path",),
    ),
    Spec(
        "prof_ranks",
        PROFILING,
        INT_LIST,
        (0,),
        "Comma-separated ranks to profile.",
        flag=False,
        to=("profile.ranks",),
    ),
    Spec(
        "prof_record_shapes",
        PROFILING,
        BOOL,
        False,
        "Record tensor shapes in the profile.",
        flag=False,
        to=("profile.record_shapes",),
    ),
)

_SERVER = (
    Spec(
        "log_level",
        SERVER,
        choice("trace", "debug", "info", "warn", "warning", "error", "critical"),
        "info",
        "The log level.",
        flag=False,
        to=("server",),
    ),
    Spec(
        "compute_type",
        SERVER,
        TEXT,
        None,
        "The x-compute-type response header.",
        flag=False,
        default_doc="cpu+optimized on cpu, else gpu+optimized",
        to=("server",),
    ),
    Spec(
        "engine_step_timeout",
        SERVER,
        POSITIVE_NUMBER,
        120.0,
        "Ours: the watchdog's deadline, in seconds, for one engine step (or idle poll). Past "
        "it the engine is hung: /health answers 503 and the launcher kills the engine and "
        "exits 1, so that an orchestrator restarts the service. With --num-shard > 1 it "
        "is also the shards' collective timeout: a rank waiting longer for its peers fails.",
        flag=False,
        to=("runner.collective_timeout",),
    ),
    Spec(
        "engine_socket",
        SERVER,
        TEXT,
        None,
        "Internal: the engine's ZeroMQ socket, set by the launcher for its HTTP workers.",
        flag=False,
        envs=("TGI_ENGINE_SOCKET",),
        to=("server",),
    ),
    Spec(
        "metrics_dir",
        SERVER,
        TEXT,
        None,
        "Internal: prometheus-client's multiprocess folder, set by the launcher for its workers.",
        flag=False,
        envs=("PROMETHEUS_MULTIPROC_DIR",),
        exported=True,
        to=("server",),
    ),
)

ENV_FIELDS: tuple[Spec, ...] = _HUB + _SCHEDULING + _GAUDI + _PROFILING + _SERVER
