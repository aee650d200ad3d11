"""The request-limit and batching flags of the launcher table (``fields.py`` joins them in)."""

from __future__ import annotations

from tgi_core.settings.kinds import (
    FLAG,
    FRACTION,
    NON_NEGATIVE_INT,
    NON_NEGATIVE_NUMBER,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    choice,
)
from tgi_core.settings.spec import BATCHING, LIMITS, Spec

__all__ = ["BATCHING_FIELDS", "LIMIT_FIELDS"]

LIMIT_FIELDS: tuple[Spec, ...] = (
    Spec(
        "max_concurrent_requests",
        LIMITS,
        POSITIVE_INT,
        128,
        "Requests in flight beyond this are refused (backpressure).",
        to=("scheduler", "server"),
    ),
    Spec(
        "max_best_of",
        LIMITS,
        NON_NEGATIVE_INT,
        2,
        "The largest best_of a client may ask.",
        to=("limits",),
    ),
    Spec(
        "max_stop_sequences",
        LIMITS,
        NON_NEGATIVE_INT,
        4,
        "The most stop sequences a client may send.",
        to=("limits",),
    ),
    Spec(
        "max_top_n_tokens",
        LIMITS,
        NON_NEGATIVE_INT,
        5,
        "The largest top_n_tokens a client may ask.",
        to=("limits",),
    ),
    Spec(
        "max_input_tokens",
        LIMITS,
        POSITIVE_INT,
        None,
        "The longest prompt, in tokens.",
        default_doc="4095, or --max-total-tokens - 1 when that is given",
        to=("scheduler", "runner", "limits"),
    ),
    Spec(
        "max_input_length",
        LIMITS,
        POSITIVE_INT,
        None,
        "Legacy name of --max-input-tokens (setting both is an error).",
        stored=False,
    ),
    Spec(
        "max_total_tokens",
        LIMITS,
        POSITIVE_INT,
        None,
        "The longest prompt + generation, in tokens (the per-request memory budget).",
        default_doc="4096 (or --max-batch-prefill-tokens when given), at least "
        "--max-input-tokens + 1",
        to=("scheduler", "runner", "limits"),
    ),
    Spec(
        "max_client_batch_size",
        LIMITS,
        POSITIVE_INT,
        4,
        "The most inputs a client may send in one request.",
        to=("limits",),
    ),
    Spec(
        "validation_workers",
        LIMITS,
        NON_NEGATIVE_INT,
        2,
        "Tokenizer workers for payload validation and truncation (> 0).",
        to=("server",),
    ),
    Spec(
        "payload_limit",
        LIMITS,
        POSITIVE_INT,
        2_000_000,
        "Request body size limit, in bytes.",
        to=("server",),
    ),
    Spec(
        "max_image_fetch_size",
        LIMITS,
        POSITIVE_INT,
        20 * 1024 * 1024,
        "Vision models: the largest image, in bytes (fetched or data URL); a fetch stops "
        "reading past it (TGI's router flag, whose default is 1 GiB).",
        envs=("MAX_IMAGE_FETCH_SIZE", "MAX_IMAGE_BYTES"),
        to=("images",),
    ),
    Spec(
        "max_images_per_request",
        LIMITS,
        POSITIVE_INT,
        8,
        "Vision models: the most images one prompt may hold (counted before any is read).",
        to=("images",),
    ),
    Spec(
        "max_image_pixels",
        LIMITS,
        POSITIVE_INT,
        7680 * 4320,
        "Vision models: the most pixels (width x height) of an image, checked from its "
        "header before it is decoded (decompression bombs).",
        to=("images",),
    ),
    Spec(
        "image_fetch_timeout",
        LIMITS,
        POSITIVE_NUMBER,
        10.0,
        "Vision models: seconds for all of one request's image fetches together (DNS, "
        "connect, redirects and bodies).",
        to=("images",),
    ),
    Spec(
        "image_fetch_allow_private",
        LIMITS,
        FLAG,
        False,
        "Vision models: allow image URLs that resolve to loopback, private, link-local, "
        "multicast, reserved or unspecified addresses (refused by default; for tests and "
        "private deployments).",
        to=("images",),
    ),
    Spec(
        "disable_grammar_support",
        LIMITS,
        FLAG,
        False,
        "Refuse grammar-constrained generation.",
        to=("limits",),
    ),
    Spec(
        "enable_prefill_logprobs",
        LIMITS,
        FLAG,
        False,
        "Allow clients to ask for prompt logprobs (decoder_input_details); without it, "
        "their details hold an empty prefill, as TGI-Gaudi's do.",
        envs=("ENABLE_PREFILL_LOGPROBS", "REQUEST_LOGPROBS"),
        to=("limits",),
    ),
    Spec(
        "watermark_gamma",
        LIMITS,
        FRACTION,
        0.5,
        "Watermark gamma: the green-list fraction of the vocabulary.",
        to=("runner",),
    ),
    Spec(
        "watermark_delta",
        LIMITS,
        NON_NEGATIVE_NUMBER,
        2.0,
        "Watermark delta: the logit bias added to green-list tokens.",
        to=("runner",),
    ),
)

BATCHING_FIELDS: tuple[Spec, ...] = (
    Spec(
        "waiting_served_ratio",
        BATCHING,
        NON_NEGATIVE_NUMBER,
        0.3,
        "Waiting/running ratio above which waiting requests may pause the running batch.",
        to=("scheduler",),
    ),
    Spec(
        "max_batch_prefill_tokens",
        BATCHING,
        POSITIVE_INT,
        None,
        "The most tokens one prefill step may hold.",
        default_doc="4096, at least --max-input-tokens",
        to=("scheduler",),
    ),
    Spec(
        "max_batch_total_tokens",
        BATCHING,
        POSITIVE_INT,
        None,
        "The most tokens (prompt + generated) a running batch may hold.",
        default_doc="what the KV cache holds after warmup",
        to=("scheduler", "runner"),
    ),
    Spec(
        "max_waiting_tokens",
        BATCHING,
        NON_NEGATIVE_INT,
        20,
        "Decode steps after which waiting requests are forced into the batch.",
        to=("scheduler",),
    ),
    Spec(
        "max_batch_size",
        BATCHING,
        POSITIVE_INT,
        32,
        "The most requests per batch (required by Gaudi; our default is 32).",
        to=("scheduler", "runner"),
    ),
    Spec(
        "queue_policy",
        BATCHING,
        choice("priority", "fifo"),
        "priority",
        "priority: shortest prompt first, requests older than QUEUE_THRESHOLD_MS first of "
        "all (TGI-Gaudi's queue); fifo: arrival order (TGI's).",
        to=("scheduler",),
    ),
    Spec(
        "num_kv_blocks",
        BATCHING,
        POSITIVE_INT,
        None,
        "KV-cache blocks to allocate, instead of sizing from free memory.",
        default_doc="from free device memory",
        to=("runner",),
    ),
)
