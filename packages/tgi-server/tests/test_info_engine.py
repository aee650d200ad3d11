"""``/info`` of a worker over the real runner: TGI's fields, then ours from the engine (the
dtype the device chose, the device, its kernels and CPU features, warmup's time)."""

from __future__ import annotations

import falcon.testing
import pytest

from tgi_core.settings import Settings
from tgi_core.settings.slices import ServerSettings
from tgi_server.app import ModelInfo, create_app
from tgi_server.engine import InProcessEngine
from tgi_server.engine.build import build_engine
from tgi_server.engine_client import InProcessEngineClient
from tgi_server.testing import smollm2_tokenizer

testing = pytest.importorskip("tgi_hpu_kernels.testing")
cpu_features = pytest.importorskip("tgi_hpu_kernels.device.cpu_features")


def test_info_reports_the_compute_path_and_warmup(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.mktemp("tiny-llama")
    testing.save_tiny_checkpoint(folder, "llama")
    argv = ["--model-id", str(folder), "--device", "cpu", "--max-input-tokens", "24"]
    argv += ["--max-total-tokens", "48", "--max-batch-prefill-tokens", "48"]
    argv += ["--max-batch-size", "4", "--num-kv-blocks", "64", "--disable-grammar-support"]
    settings = Settings.from_sources(argv, {"BLOCK_SIZE": "8", "HF_HUB_OFFLINE": "1"})
    tokenizer = smollm2_tokenizer()
    ready = build_engine(settings, tokenizer=tokenizer)
    with InProcessEngine(ready.engine, ready.info) as engine:
        server = ServerSettings(model_id="tiny")
        app = create_app(
            server, InProcessEngineClient(engine), tokenizer, ModelInfo(model_id="tiny")
        )
        info = falcon.testing.TestClient(app).simulate_get("/info").json
    host = cpu_features.host_cpu_features()
    assert info["model_id"] == "tiny" and info["router"] == "text-generation-router"
    # --dtype unset: the device's choice for this CPU
    assert info["model_dtype"] == ("bfloat16" if host.native_bf16 else "float32")
    assert info["model_device_type"] == "cpu"
    assert host.describe() in info["compute_path"]
    assert "native kernels" in info["compute_path"] or "torch ops" in info["compute_path"]
    assert ready.info.warmup is not None
    assert info["warmup_seconds"] == round(ready.info.warmup.seconds, 3)
    ours = ["model_dtype", "model_device_type", "compute_path", "warmup_seconds", "lora_adapters"]
    assert list(info)[-5:] == ours
