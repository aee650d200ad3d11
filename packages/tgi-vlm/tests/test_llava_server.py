"""LLaVA-NeXT through the HTTP app and the real engine (in process): ``/generate`` with a
data-URL image answers transformers' greedy tokens; a bad image and a prompt whose image
features exceed the limits get TGI's 422s; text-only prompts still work."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
from PIL import Image

from tgi_core.contract import PrefillShape
from tgi_core.settings import Settings
from tgi_core.tokenization import load_tokenizer
from tgi_hpu_kernels.warmup import representative_shapes
from tgi_scheduler import all_shapes
from tgi_server.app import ModelInfo, create_app
from tgi_server.engine import InProcessEngine, build_engine
from tgi_server.engine_client import InProcessEngineClient
from tgi_vlm.llava_next import LlavaNextConfig, num_image_tokens
from tgi_vlm.llava_next.prompt import LlavaNextPromptEncoder
from tgi_vlm.prompt_encoding import prompt_encoder_for

from .conftest import encode_image, random_image
from .test_llava_serving import hf_tokens

NUM_NEW = 6
MAX_INPUT_TOKENS = 200
MAX_TOTAL_TOKENS = 256
BASE_IMAGE_TOKENS = 128


class Served:
    def __init__(self, folder: Path) -> None:
        argv = [
            "--model-id", str(folder), "--dtype", "float32", "--device", "cpu",
            "--max-input-tokens", str(MAX_INPUT_TOKENS),
            "--max-total-tokens", str(MAX_TOTAL_TOKENS),
            "--max-batch-prefill-tokens", "512", "--max-batch-size", "4",
            "--num-kv-blocks", "64",
        ]  # fmt: skip
        environ = {"BASE_IMAGE_TOKENS": str(BASE_IMAGE_TOKENS), "PAD_SEQUENCE_TO_MULTIPLE_OF": "32"}
        settings = Settings.from_sources(argv, environ)
        ready = build_engine(settings)
        self.settings = settings
        self.warmup = ready.info.warmup
        self.engine = InProcessEngine(ready.engine, ready.info).start()
        self.tokenizer = load_tokenizer(settings.model_id)
        encoder = prompt_encoder_for(settings.model_id, self.tokenizer)
        assert isinstance(encoder, LlavaNextPromptEncoder)
        self.app = create_app(
            settings.server(),
            InProcessEngineClient(self.engine),
            self.tokenizer,
            ModelInfo.from_engine_info(ready.info),
            prompt_encoder=encoder,
        )
        self.config = LlavaNextConfig.from_folder(folder)


@pytest.fixture(scope="module")
def served(llava_folder: Path) -> Iterator[Served]:
    served = Served(llava_folder)
    yield served
    served.engine.stop()


@pytest.fixture
def client(served: Served) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(served.app)


def markdown(image: Image.Image) -> str:
    return f"![](data:image/png;base64,{base64.b64encode(encode_image(image, 'PNG')).decode()})"


def generate(client: falcon.testing.TestClient, inputs: str) -> Any:
    parameters = {"max_new_tokens": NUM_NEW, "details": True}
    return client.simulate_post("/generate", json={"inputs": inputs, "parameters": parameters})


def test_generate_with_an_image_answers_transformers_tokens(
    client: falcon.testing.TestClient, tiny_hf_model: Any, tiny_hf_processor: Any
) -> None:
    image = random_image(40, 24, seed=1)
    _, expected = hf_tokens(tiny_hf_model, tiny_hf_processor, "hello <image> world", [image])
    result = generate(client, f"hello {markdown(image)} world")
    assert result.status_code == 200, result.text
    details = result.json["details"]
    ids = [token["id"] for token in details["tokens"]]
    assert ids == expected


def test_text_only_prompt_is_served(client: falcon.testing.TestClient) -> None:
    result = generate(client, "hello world hello")
    assert result.status_code == 200, result.text


def test_invalid_image_is_a_422(client: falcon.testing.TestClient) -> None:
    result = generate(client, "hello ![](data:image/png;base64,AAA) world")
    assert result.status_code == 422
    assert result.json == {
        "error": "Input validation error: base64 encoding is invalid: Invalid padding",
        "error_type": "validation",
    }


def test_image_features_count_as_input_tokens(
    client: falcon.testing.TestClient, served: Served
) -> None:
    image = random_image(64, 64, seed=2)
    num_tokens = 2 + 3 * num_image_tokens(served.config, 64, 64)  # hello, world, 3 images
    assert num_tokens + NUM_NEW > MAX_TOTAL_TOKENS
    result = generate(client, "hello " + markdown(image) * 3 + " world")
    assert result.status_code == 422
    assert result.json["error"] == (
        f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
        f"{MAX_TOTAL_TOKENS}. Given: {num_tokens} `inputs` tokens and {NUM_NEW} `max_new_tokens`"
    )


def test_warmup_starts_the_prefills_at_base_image_tokens(
    served: Served, client: falcon.testing.TestClient
) -> None:
    """TGI-Gaudi's VLM warmup: prefill lengths from BASE_IMAGE_TOKENS up, and nothing the
    tests above ran (images or text) was left unwarmed."""
    floor = replace(served.settings.scheduler(), min_prefill_len=BASE_IMAGE_TOKENS)
    prefill_lengths = {s.seq_len for s in all_shapes(floor) if isinstance(s, PrefillShape)}
    assert min(prefill_lengths) == BASE_IMAGE_TOKENS
    assert served.warmup is not None
    # the packed CPU runs representatives of the floor's buckets (tgi_hpu_kernels.warmup)
    assert served.warmup.num_shapes == len(representative_shapes(all_shapes(floor)))
    text = "text-only prompt"
    assert generate(client, text).status_code == 200  # pads up to the floor: a warmed shape
    metrics = client.simulate_get("/metrics").text.splitlines()
    assert "tgi_unwarmed_shapes 0" in metrics


def test_a_literal_image_placeholder_beside_an_image_is_a_422(
    client: falcon.testing.TestClient,
) -> None:
    """One feature per placeholder: a stray ``<image>`` in the text is refused up front (the
    runner would otherwise fail the whole prefill batch)."""
    image = random_image(40, 24, seed=1)
    result = generate(client, f"hello <image> {markdown(image)} world")
    assert result.status_code == 422
    assert result.json["error"] == (
        "Input validation error: the prompt's text holds <image> placeholders of its own: "
        "give images as ![](url) only"
    )
    assert generate(client, "text <image> alone").status_code == 200  # no image: plain token


def test_truncating_a_prompt_with_images_is_a_422(client: falcon.testing.TestClient) -> None:
    image = random_image(40, 24, seed=1)
    body = {
        "inputs": f"hello {markdown(image)} world",
        "parameters": {"max_new_tokens": NUM_NEW, "truncate": 3},
    }
    result = client.simulate_post("/generate", json=body)
    assert result.status_code == 422
    assert result.json["error"].startswith(
        "Input validation error: `truncate` must not cut a prompt with images: it has "
    )
    assert result.json["error"].endswith("tokens (images included). Given: 3")
