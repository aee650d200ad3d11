"""End to end: ``python -m tgi_server.engine`` on a tiny random Llama, driven over ipc://.

The checkpoint (safetensors) and a word-level tokenizer are built in the test; the engine
process loads them with the real ``TorchModelRunner`` on the CPU, warms up, reports ready,
and its greedy tokens must match transformers' on the same weights.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from tgi_core.contract import FinishReason, GenerationRequest, TokenEvent
from tgi_core.settings import Settings
from tgi_server.engine import InProcessEngine, start_engine_process, wait_until_ready
from tgi_server.engine_client import EngineClient, InProcessEngineClient, ZmqEngineClient
from tgi_server.ipc import EngineInfo, make_socket_dir, socket_path

transformers = pytest.importorskip("transformers")
testing = pytest.importorskip("tgi_hpu_kernels.testing")

PROMPTS = [(5, 17, 33, 9), (40, 41), (7, 7, 7, 7, 7, 7), (100, 3, 64)]
MAX_NEW_TOKENS = 12


class TinyModel(NamedTuple):
    folder: Path
    model: torch.nn.Module
    settings: Settings


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = testing.save_tiny_checkpoint(folder, "llama")
    testing.save_word_tokenizer(folder)
    argv = ["--model-id", str(folder), "--device", "cpu", "--dtype", "float32"]
    argv += ["--max-input-tokens", "24", "--max-total-tokens", "48"]
    argv += ["--max-batch-prefill-tokens", "48", "--max-batch-size", "4", "--num-kv-blocks", "64"]
    gaudi = {"BLOCK_SIZE": "8", "PAD_SEQUENCE_TO_MULTIPLE_OF": "8", "BATCH_BUCKET_SIZE": "2"}
    gaudi |= {"PREFILL_BATCH_BUCKET_SIZE": "2", "HF_HUB_OFFLINE": "1"}
    return TinyModel(folder, model, Settings.from_sources(argv, gaudi))


async def generate_all(client: EngineClient) -> list[list[TokenEvent]]:
    """One request alone, then three in one batch; greedy, EOS ignored."""
    requests = [
        GenerationRequest(client.next_request_id(), prompt, MAX_NEW_TOKENS, ignore_eos=True)
        for prompt in PROMPTS
    ]

    async def collect(request: GenerationRequest) -> list[TokenEvent]:
        events = [event async for event in client.generate(request)]
        assert all(isinstance(event, TokenEvent) for event in events)
        return events  # type: ignore[return-value]

    streams = [await collect(requests[0])]
    streams += await asyncio.gather(*(collect(r) for r in requests[1:]))
    assert (await client.stats()).engine.num_unwarmed_shapes == 0
    return streams


def assert_matches_transformers(tiny: TinyModel, streams: list[list[TokenEvent]]) -> None:
    for prompt, events in zip(PROMPTS, streams, strict=True):
        assert [event.token_id for event in events] == testing.greedy_reference(
            tiny.model, prompt, MAX_NEW_TOKENS
        )
        assert events[-1].finish_reason is FinishReason.LENGTH


def assert_ready_info(info: EngineInfo, tiny: TinyModel) -> None:
    assert (info.model_id, info.block_size, info.num_kv_blocks) == (str(tiny.folder), 8, 64)
    assert info.max_supported_total_tokens == 63 * 8  # block 0 is reserved
    assert (info.max_input_tokens, info.max_total_tokens) == (24, 48)
    assert info.eos_token_ids == (2,)
    assert (info.model_dtype, info.model_device_type) == ("float32", "cpu")
    assert info.warmup is not None and info.warmup.num_shapes > 0


@pytest.mark.slow
def test_engine_process_with_the_real_runner(tiny: TinyModel, tmp_path: Path) -> None:
    # What a launcher does: resolve the settings once, hand them to the child encoded.
    environ = tiny.settings.child_environ({"HOME": str(tmp_path)})
    socket_dir = make_socket_dir()
    path = socket_path(socket_dir)
    process = start_engine_process(path, env=environ)
    try:
        info = wait_until_ready(path, is_alive=lambda: process.poll() is None, timeout_s=300)
        assert info.pid == process.pid
        assert_ready_info(info, tiny)

        async def run() -> list[list[TokenEvent]]:
            client = ZmqEngineClient(path)
            try:
                return await generate_all(client)
            finally:
                await client.aclose()

        assert_matches_transformers(tiny, asyncio.run(run()))
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(60) == 0
        assert not path.exists()
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)
        path.unlink(missing_ok=True)
        socket_dir.rmdir()


@pytest.mark.slow
def test_in_process_engine_from_settings(tiny: TinyModel) -> None:
    with InProcessEngine.from_settings(tiny.settings) as engine:
        assert_ready_info(engine.info, tiny)
        client = InProcessEngineClient(engine)
        assert_matches_transformers(tiny, asyncio.run(generate_all(client)))
