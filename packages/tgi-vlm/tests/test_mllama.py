"""Mllama (Llama 3.2 Vision) served through transformers, recomputed every step, with its
images: greedy tokens equal transformers' ``generate`` on a tiny random model (one image;
two images of different sizes; batched with a text-only prompt), the prompt holds one
``<|image|>`` token per image, the family needs no ``BASE_IMAGE_TOKENS`` room, and more
than one shard is refused."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import tokenizers
import torch
from PIL import Image

from tgi_core.contract import GenerationRequest, ImageInput, TokenEvent
from tgi_core.errors import ValidationError
from tgi_core.settings.slices import RunnerSettings, SchedulerSettings
from tgi_hpu_kernels import TorchModelRunner
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_scheduler import Engine
from tgi_vlm.mllama.images import MllamaImages
from tgi_vlm.mllama.prompt import IMAGE_TOKEN, MllamaPromptEncoder
from tgi_vlm.prompt_encoding import prompt_encoder_for
from tgi_vlm.runner_parts import runner_parts_for

from .conftest import encode_image, random_image

IMAGE_ID = 120
MAX_TILES = 2
NUM_NEW = 8
BLOCK_SIZE = 4


class _WordTokenizer:
    """``t{i}`` is token ``i`` and ``<|image|>`` token 120 (a ``TextEncoder``)."""

    def __init__(self, folder: Path) -> None:
        self._tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)


@pytest.fixture(scope="module")
def mllama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    """A tiny random Mllama folder (weights, config, image processor, tokenizer), its
    transformers model and image processor."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    folder = tmp_path_factory.mktemp("tiny-mllama")
    torch.manual_seed(0)
    config = MllamaConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
            "max_num_tiles": MAX_TILES,
            "intermediate_layers_indices": [0],
            "vision_output_dim": 64,
            "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]],
            "initializer_range": 0.2,
        },
        text_config={
            "vocab_size": 128,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "cross_attention_layers": [1, 3],
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "max_position_embeddings": 256,
            "initializer_range": 0.2,
        },
        image_token_index=IMAGE_ID,
    )
    model = MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():  # the cross-attention gates start closed (tanh(0)): open them
        for name, parameter in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                parameter.fill_(1.0)
    model.save_pretrained(folder)
    processor = MllamaImageProcessorPil(size={"height": 28, "width": 28}, max_image_tiles=MAX_TILES)
    processor.save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(128) if i != IMAGE_ID} | {IMAGE_TOKEN: IMAGE_ID}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([tokenizers.AddedToken(IMAGE_TOKEN, special=True)])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "t1", "eos_token": "t2"})
    )
    return folder, model, processor


@pytest.fixture(scope="module")
def runner(mllama: tuple[Path, Any, Any]) -> TorchModelRunner:
    folder = mllama[0]
    settings = RunnerSettings(
        model_id=str(folder),
        dtype="float32",
        device="cpu",
        block_size=BLOCK_SIZE,
        max_input_tokens=64,  # far below BASE_IMAGE_TOKENS: an image is one token here
        max_total_tokens=96,
    )
    parts = runner_parts_for(settings)
    assert parts is not None and not parts.expands_images
    assert parts.nested_model is None and parts.prompt_embedder is None
    assert isinstance(parts.history_inputs, MllamaImages)
    return TorchModelRunner(
        settings, device=CpuDevice(), num_kv_blocks=128, history_inputs=parts.history_inputs
    )


def _png(height: int, width: int, seed: int) -> tuple[Image.Image, ImageInput]:
    image = random_image(height, width, seed=seed)
    data = encode_image(image, "PNG")
    return image, ImageInput(data, "image/png", height, width)


def _expected(mllama: tuple[Path, Any, Any], prompt: list[int], images: list[Image.Image]) -> Any:
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    _, model, processor = mllama
    kwargs: dict[str, Any] = {}
    if images:
        pixels = processor(images=[images], return_tensors="pt")
        spans = [get_cross_attention_token_mask(prompt, IMAGE_ID)]
        mask = convert_sparse_cross_attention_mask_to_dense(
            spans, pixels["num_tiles"], MAX_TILES, len(prompt)
        )
        kwargs = {
            "pixel_values": pixels["pixel_values"],
            "aspect_ratio_ids": pixels["aspect_ratio_ids"],
            "aspect_ratio_mask": pixels["aspect_ratio_mask"],
            "cross_attention_mask": torch.from_numpy(mask),
        }
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            max_new_tokens=NUM_NEW,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            **kwargs,
        )
    return out[0, len(prompt) :].tolist()


def _run(runner: TorchModelRunner, requests: Sequence[GenerationRequest]) -> dict[int, list[int]]:
    settings = SchedulerSettings(
        max_input_tokens=64,
        max_total_tokens=96,
        max_batch_prefill_tokens=256,
        block_size=BLOCK_SIZE,
        pad_sequence_to_multiple_of=BLOCK_SIZE,
    )
    engine = Engine.create(settings, runner, eos_token_ids=())
    for item in requests:
        engine.add_request(item)
    tokens: dict[int, list[int]] = {r.request_id: [] for r in requests}
    while engine.has_unfinished():
        for event in engine.step():
            assert isinstance(event, TokenEvent), event
            tokens[event.request_id].append(event.token_id)
    return tokens


def _request(request_id: int, prompt: list[int], images: Sequence[ImageInput] = ()) -> Any:
    return GenerationRequest(
        request_id=request_id,
        prompt_ids=tuple(prompt),
        max_new_tokens=NUM_NEW,
        ignore_eos=True,
        images=tuple(images),
    )


CASES = [
    ([1, 5, IMAGE_ID, 17, 33, 9], [(40, 70, 1)]),
    ([1, IMAGE_ID, 40, 41, IMAGE_ID, 7, 7, 7], [(30, 30, 2), (50, 20, 3)]),
]


@pytest.mark.parametrize(("prompt", "sizes"), CASES)
def test_greedy_tokens_equal_transformers(
    mllama: tuple[Path, Any, Any],
    runner: TorchModelRunner,
    prompt: list[int],
    sizes: list[tuple[int, int, int]],
) -> None:
    pairs = [_png(*size) for size in sizes]
    expected = _expected(mllama, prompt, [p[0] for p in pairs])
    text_prompt = [1, 5, 17, 33]
    text_expected = _expected(mllama, text_prompt, [])
    images = [p[1] for p in pairs]
    assert _run(runner, [_request(0, prompt, images)])[0] == expected
    batched = _run(runner, [_request(1, text_prompt), _request(2, prompt, images)])
    assert batched == {1: text_expected, 2: expected}
    # the image changes the answer: the test sees whether the pixels reach the model
    assert expected != _expected(mllama, prompt, [_png(*size[:2], 9)[0] for size in sizes])


def test_sharded_mllama_is_refused(mllama: tuple[Path, Any, Any]) -> None:
    """Its text model cross-attends to the image: transformers serves it whole, unsharded."""
    settings = RunnerSettings(model_id=str(mllama[0]), num_shard=2)
    with pytest.raises(
        ValueError, match=r"^Mllama is served on one shard only .*transformers serves it whole"
    ):
        runner_parts_for(settings)


def test_prompt_holds_one_image_token_per_image(mllama: tuple[Path, Any, Any]) -> None:
    folder = mllama[0]
    encoder = prompt_encoder_for(str(folder), _WordTokenizer(folder))
    assert isinstance(encoder, MllamaPromptEncoder)
    _, image = _png(20, 30, 4)
    url = f"![](data:image/png;base64,{base64.b64encode(image.data).decode()})"
    ids, images = encoder.encode_with_images(f"t5 {url} t17 t33")
    assert list(ids) == [5, IMAGE_ID, 17, 33]
    assert images == (image,)
    with pytest.raises(ValidationError, match=r"holds <\|image\|> tokens of its own"):
        encoder.encode_with_images(f"t5 {IMAGE_TOKEN} {url}")


def test_http_generate_with_an_image(mllama: tuple[Path, Any, Any]) -> None:
    """Through the HTTP app and the real engine (in process, warmed up as the server
    warms it): ``/generate`` with a data-URL image answers transformers' greedy tokens."""
    import falcon.testing

    from tgi_core.settings import Settings
    from tgi_core.tokenization import load_tokenizer
    from tgi_server.app import ModelInfo, create_app
    from tgi_server.engine import InProcessEngine, build_engine
    from tgi_server.engine_client import InProcessEngineClient

    folder = mllama[0]
    argv = [
        "--model-id", str(folder), "--dtype", "float32", "--device", "cpu",
        "--max-input-tokens", "32", "--max-total-tokens", "64",
        "--max-batch-prefill-tokens", "128", "--max-batch-size", "4",
    ]  # fmt: skip
    settings = Settings.from_sources(argv, {"PAD_SEQUENCE_TO_MULTIPLE_OF": "32"})
    ready = build_engine(settings)
    engine = InProcessEngine(ready.engine, ready.info).start()
    try:
        tokenizer = load_tokenizer(settings.model_id)
        encoder = prompt_encoder_for(settings.model_id, tokenizer)
        assert encoder is not None
        app = create_app(
            settings.server(),
            InProcessEngineClient(engine),
            tokenizer,
            ModelInfo.from_engine_info(ready.info),
            prompt_encoder=encoder,
        )
        image, png = _png(40, 70, 1)
        url = f"![](data:image/png;base64,{base64.b64encode(png.data).decode()})"
        text = f"t5 {url} t17 t33 t9"
        prompt = list(encoder.encode(text))
        assert prompt.count(IMAGE_ID) == 1
        expected = _expected(mllama, prompt, [image])
        parameters = {"max_new_tokens": NUM_NEW, "details": True}
        result = falcon.testing.TestClient(app).simulate_post(
            "/generate", json={"inputs": text, "parameters": parameters}
        )
        assert result.status_code == 200, result.text
        details = result.json["details"]
        ids = [token["id"] for token in details["tokens"]]
        if details["finish_reason"] == "length":
            assert ids == expected
        else:  # ended on the EOS token, where transformers' greedy also chose it
            assert ids == expected[: len(ids)] and ids[-1] == 2
        assert "recomputed every step" in ready.info.compute_path
    finally:
        engine.stop()
