"""Settings errors: every bad value, parser error and cross-check, with its exact one line."""

from __future__ import annotations

import pytest

from tgi_core.settings import FIELDS, HostInfo, Settings, SettingsError

PLAIN = HostInfo(habana_available=False, embedded_model=None)
_BY_NAME = {spec.name: spec for spec in FIELDS}


def error_of(argv: list[str], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(SettingsError) as raised:
        Settings.from_sources(argv, environ or {}, host=PLAIN)
    message = str(raised.value)
    assert message and "\n" not in message
    return message


BAD_VALUES = [
    (
        "max_batch_size",
        ["--max-batch-size", "abc"],
        {},
        "invalid value 'abc' for '--max-batch-size <MAX_BATCH_SIZE>': expected a positive integer",
    ),
    (
        "max_batch_size",
        [],
        {"MAX_BATCH_SIZE": "0"},
        "invalid value '0' for '--max-batch-size <MAX_BATCH_SIZE>' "
        "(from environment variable MAX_BATCH_SIZE): expected a positive integer",
    ),
    (
        "sharded",
        ["--sharded", "maybe"],
        {},
        "invalid value 'maybe' for '--sharded <SHARDED>': expected one of: true, false",
    ),
    (
        "json_output",
        [],
        {"JSON_OUTPUT": "maybe"},
        "invalid value 'maybe' for '--json-output' (from environment variable JSON_OUTPUT): "
        "expected one of: true, false",
    ),
    (
        "enable_prefill_logprobs",
        [],
        {"REQUEST_LOGPROBS": "2"},
        "invalid value '2' for '--enable-prefill-logprobs' "
        "(from environment variable REQUEST_LOGPROBS): expected one of: true, false",
    ),
    (
        "port",
        ["--port", "70000"],
        {},
        "invalid value '70000' for '--port <PORT>': expected a port number in 0..=65535",
    ),
    (
        "dtype",
        ["--dtype", "float64"],
        {},
        "invalid value 'float64' for '--dtype <DTYPE>': "
        "expected one of: float16, bfloat16, float32",
    ),
    (
        "device",
        [],
        {"DEVICE": "tpu"},
        "invalid value 'tpu' for '--device <DEVICE>' (from environment variable DEVICE): "
        "expected one of: auto, cpu, cuda, hpu",
    ),
    (
        "queue_policy",
        ["--queue-policy", "lifo"],
        {},
        "invalid value 'lifo' for '--queue-policy <QUEUE_POLICY>': expected one of: priority, fifo",
    ),
    (
        "waiting_served_ratio",
        ["--waiting-served-ratio=-1"],
        {},
        "invalid value '-1' for '--waiting-served-ratio <WAITING_SERVED_RATIO>': "
        "expected a non-negative number",
    ),
    (
        "cuda_memory_fraction",
        ["--cuda-memory-fraction", "1.5"],
        {},
        "invalid value '1.5' for '--cuda-memory-fraction <CUDA_MEMORY_FRACTION>': "
        "expected a number in (0, 1]",
    ),
    (
        "cuda_graphs",
        ["--cuda-graphs", "1,x"],
        {},
        "invalid value '1,x' for '--cuda-graphs <CUDA_GRAPHS>': "
        "expected a comma-separated list of non-negative integers",
    ),
    (
        "workers",
        ["--workers", "0"],
        {},
        "invalid value '0' for '--workers <WORKERS>': expected a positive integer",
    ),
    (
        "num_kv_blocks",
        ["--num-kv-blocks", "-"],
        {},
        "invalid value '-' for '--num-kv-blocks <NUM_KV_BLOCKS>': expected a positive integer",
    ),
    (
        "num_threads",
        [],
        {"NUM_THREADS": "1.5"},
        "invalid value '1.5' for '--num-threads <NUM_THREADS>' "
        "(from environment variable NUM_THREADS): expected a positive integer",
    ),
    (
        "max_total_tokens",
        ["--max-total-tokens", "4k"],
        {},
        "invalid value '4k' for '--max-total-tokens <MAX_TOTAL_TOKENS>': "
        "expected a positive integer",
    ),
    (
        "batch_bucket_size",
        [],
        {"BATCH_BUCKET_SIZE": "0"},
        "invalid value '0' for environment variable BATCH_BUCKET_SIZE: expected a positive integer",
    ),
    (
        "prefill_batch_bucket_size",
        [],
        {"PREFILL_BATCH_BUCKET_SIZE": "-4"},
        "invalid value '-4' for environment variable PREFILL_BATCH_BUCKET_SIZE: "
        "expected a positive integer",
    ),
    (
        "pad_sequence_to_multiple_of",
        [],
        {"PAD_SEQUENCE_TO_MULTIPLE_OF": "0"},
        "invalid value '0' for environment variable PAD_SEQUENCE_TO_MULTIPLE_OF: "
        "expected a positive integer",
    ),
    (
        "queue_threshold_ms",
        [],
        {"QUEUE_THRESHOLD_MS": "soon"},
        "invalid value 'soon' for environment variable QUEUE_THRESHOLD_MS: "
        "expected a non-negative integer",
    ),
    (
        "enable_hpu_graph",
        [],
        {"ENABLE_HPU_GRAPH": "sometimes"},
        "invalid value 'sometimes' for environment variable ENABLE_HPU_GRAPH: "
        "expected one of: true, false",
    ),
    (
        "prof_ranks",
        [],
        {"PROF_RANKS": "0,a"},
        "invalid value '0,a' for environment variable PROF_RANKS: "
        "expected a comma-separated list of non-negative integers",
    ),
    (
        "block_size",
        [],
        {"BLOCK_SIZE": "0"},
        "invalid value '0' for environment variable BLOCK_SIZE: expected a positive integer",
    ),
    (
        "log_level",
        [],
        {"LOG_LEVEL": "loud"},
        "invalid value 'loud' for environment variable LOG_LEVEL: "
        "expected one of: trace, debug, info, warn, warning, error, critical",
    ),
    (
        "max_input_tokens",
        ["--max-input-tokens", "12\n34"],
        {},
        "invalid value '12\\n34' for '--max-input-tokens <MAX_INPUT_TOKENS>': "
        "expected a positive integer",
    ),
]


@pytest.mark.parametrize(("name", "argv", "environ", "expected"), BAD_VALUES)
def test_bad_value_is_one_line_naming_flag_and_variable(
    name: str, argv: list[str], environ: dict[str, str], expected: str
) -> None:
    message = error_of(argv, environ)
    assert message == expected
    spec = _BY_NAME[name]
    if spec.long is not None:
        assert spec.long in message
    assert any(env in message for env in spec.env_names)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--foo"], "unexpected argument '--foo' found"),
        (
            ["--max-batch-sise", "4"],
            "unexpected argument '--max-batch-sise' found "
            "(tip: a similar argument exists: '--max-batch-size')",
        ),
        (["serve"], "unexpected argument 'serve' found"),
        (["-x"], "unexpected argument '-x' found"),
        (["--", "extra"], "unexpected argument 'extra' found"),
        (["--port"], "a value is required for '--port <PORT>' but none was supplied"),
        (
            ["--port", "--json-output"],
            "a value is required for '--port <PORT>' but none was supplied",
        ),
        (
            ["--json-output=true"],
            "unexpected value 'true' for '--json-output' found; no more were expected",
        ),
        (["-e=1"], "unexpected value '1' for '--env' found; no more were expected"),
        (
            ["-p", "1", "--port", "2"],
            "the argument '--port <PORT>' cannot be used multiple times",
        ),
        (["--ngrok", "--ngrok"], "the argument '--ngrok' cannot be used multiple times"),
    ],
)
def test_parser_errors_read_like_clap(argv: list[str], expected: str) -> None:
    assert error_of(argv) == expected


_TOKENS = "(see --max-input-tokens <MAX_INPUT_TOKENS> and --max-total-tokens <MAX_TOTAL_TOKENS>)"
_PREFILL = (
    "(see --max-batch-prefill-tokens <MAX_BATCH_PREFILL_TOKENS> and "
    "--max-input-tokens <MAX_INPUT_TOKENS>)"
)
_SHARDS = "(see --sharded <SHARDED> and --num-shard <NUM_SHARD>)"


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (
            ["--max-input-tokens", "4096", "--max-total-tokens", "4096"],
            {},
            f"`max_input_tokens`(4096) must be < `max_total_tokens`(4096) {_TOKENS}",
        ),
        (
            ["--max-total-tokens", "1"],
            {},
            f"`max_input_tokens`(1) must be < `max_total_tokens`(1) {_TOKENS}",
        ),
        (
            ["--max-input-tokens", "2000", "--max-batch-prefill-tokens", "1000"],
            {},
            f"`max_batch_prefill_tokens` must be >= `max_input_tokens`. Given: 1000 and 2000 "
            f"{_PREFILL}",
        ),
        (
            ["--max-batch-total-tokens", "4000"],
            {},
            "`max_batch_prefill_tokens` must be <= `max_batch_total_tokens`. Given: 4096 and "
            "4000 (see --max-batch-prefill-tokens <MAX_BATCH_PREFILL_TOKENS> and "
            "--max-batch-total-tokens <MAX_BATCH_TOTAL_TOKENS>)",
        ),
        (
            ["--max-input-tokens", "2000", "--max-total-tokens", "8192"],
            {"MAX_BATCH_PREFILL_TOKENS": "2048", "MAX_BATCH_TOTAL_TOKENS": "4096"},
            "`max_total_tokens` must be <= `max_batch_total_tokens`. Given: 8192 and 4096 "
            "(see --max-total-tokens <MAX_TOTAL_TOKENS> and "
            "--max-batch-total-tokens <MAX_BATCH_TOTAL_TOKENS>)",
        ),
        (
            ["--max-input-tokens", "100", "--max-input-length", "200"],
            {},
            "Both `max_input_tokens` (100) and `max_input_length` (200) are set. Please define "
            "only `max_input_tokens` as `max_input_length is deprecated for naming consistency.",
        ),
        (
            ["--max-input-tokens", "100"],
            {"MAX_INPUT_LENGTH": "200"},
            "Both `max_input_tokens` (100) and `max_input_length` (200) are set. Please define "
            "only `max_input_tokens` as `max_input_length is deprecated for naming consistency.",
        ),
        (
            ["--sharded", "true"],
            {},
            "--num-shard and CUDA_VISIBLE_DEVICES/NVIDIA_VISIBLE_DEVICES/ZE_AFFINITY_MASK/"
            f"HABANA_VISIBLE_DEVICES are not set {_SHARDS}",
        ),
        (
            ["--sharded", "true"],
            {"HABANA_VISIBLE_DEVICES": "all"},
            "--num-shard and CUDA_VISIBLE_DEVICES/NVIDIA_VISIBLE_DEVICES/ZE_AFFINITY_MASK/"
            f"HABANA_VISIBLE_DEVICES are not set {_SHARDS}",
        ),
        (
            ["--sharded", "true"],
            {"CUDA_VISIBLE_DEVICES": "0"},
            "`sharded` is true but only found 1 CUDA devices (see --sharded <SHARDED>)",
        ),
        (
            ["--sharded", "true", "--num-shard", "1"],
            {},
            f"`sharded` is true but `num_shard` <= 1 {_SHARDS}",
        ),
        (
            ["--sharded", "false", "--num-shard", "4"],
            {},
            f"`sharded` is false but `num_shard` is 4 {_SHARDS}",
        ),
        (
            ["--num-shard", "0"],
            {},
            "`num_shard` cannot be < 1 (see --num-shard <NUM_SHARD>)",
        ),
        (
            ["--validation-workers", "0"],
            {},
            "`validation_workers` must be > 0 (see --validation-workers <VALIDATION_WORKERS>)",
        ),
        (
            ["--quantize", "exl2", "--num-shard", "2"],
            {},
            "Sharding is currently not supported with `exl2` quantization "
            "(see --quantize <QUANTIZE>)",
        ),
        (
            ["--ngrok"],
            {},
            "`ngrok-authtoken` must be set when using ngrok tunneling (see --ngrok)",
        ),
        (
            ["--ngrok", "--ngrok-authtoken", "t"],
            {},
            "`ngrok-edge` must be set when using ngrok tunneling (see --ngrok)",
        ),
        (
            ["--lora-adapters", "a/b@v1@v2"],
            {},
            "Invalid LoRA adapter format: a/b@v1@v2 (see --lora-adapters <LORA_ADAPTERS>)",
        ),
        (
            ["--lora-adapters", "=/path"],
            {},
            "Invalid LoRA adapter format: =/path (see --lora-adapters <LORA_ADAPTERS>)",
        ),
    ],
)
def test_cross_checks_use_tgi_texts(
    argv: list[str], environ: dict[str, str], expected: str
) -> None:
    assert error_of(argv, environ) == expected


def test_arbitrary_limits_are_accepted() -> None:
    settings = Settings.from_sources(
        ["--max-total-tokens", "10000", "--max-batch-size", "7"],
        {"BATCH_BUCKET_SIZE": "3", "PAD_SEQUENCE_TO_MULTIPLE_OF": "100"},
        host=PLAIN,
    )
    assert (settings.max_total_tokens, settings.max_input_tokens) == (10000, 9999)
    assert (settings.max_batch_size, settings.batch_bucket_size) == (7, 3)
    assert settings.pad_sequence_to_multiple_of == 100


QUANTIZE_KIND = next(spec for spec in FIELDS if spec.name == "quantize").kind
QUANTIZE_VALUES = QUANTIZE_KIND.expected.removeprefix("one of: ").split(", ")


def test_every_quantize_value_is_served_or_refused_in_one_line() -> None:
    from tgi_core.settings.checks import SERVED_QUANTIZE, UNSERVED_QUANTIZE

    assert set(QUANTIZE_VALUES) == {*SERVED_QUANTIZE, *UNSERVED_QUANTIZE}
    for value in SERVED_QUANTIZE:
        settings = Settings.from_sources(["--quantize", value], {}, host=PLAIN)
        assert settings.runner(0).quantize == value
    for value in UNSERVED_QUANTIZE:
        message = error_of(["--quantize", value], {})
        assert "\n" not in message
        assert message.startswith(f"`{value}` checkpoints are not supported by this server")
        assert message.endswith("(see --quantize <QUANTIZE>)")
