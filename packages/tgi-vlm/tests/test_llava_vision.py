"""``LlavaNextVision`` (loaded from a saved tiny checkpoint) against transformers 5's
``LlavaNextForConditionalGeneration``: image features, and the logits once the features are
merged into the prompt's embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tgi_vlm.llava_next import (
    ImageProcessorConfig,
    LlavaNextConfig,
    load_llava_next_vision,
    merge_image_embeddings,
    num_image_tokens,
    preprocess,
)

SIZES = [(50, 70), (13, 40)]  # a 2 x 2 grid and a 1 x 2 grid with padding rows cut


@pytest.fixture(scope="module")
def images(random_image: Any) -> list[Any]:
    return [random_image(h, w, seed=h + w) for h, w in SIZES]


@pytest.fixture(scope="module")
def processor_config(tiny_hf_image_processor: Any) -> ImageProcessorConfig:
    return ImageProcessorConfig.from_dict(tiny_hf_image_processor.to_dict())


def _hf_features(model: Any, image_processor: Any, images: list[Any]) -> list[torch.Tensor]:
    inputs = image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        outputs = model.model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], return_dict=True
        )
    return list(outputs.pooler_output)


def _our_features(
    folder: Path, processor_config: ImageProcessorConfig, images: list[Any]
) -> list[torch.Tensor]:
    vision = load_llava_next_vision(folder)
    with torch.no_grad():
        return vision.embed([preprocess(image, processor_config) for image in images])


def test_image_features_equal_transformers(
    tiny_hf_model: Any,
    tiny_checkpoint: Path,
    tiny_hf_image_processor: Any,
    processor_config: ImageProcessorConfig,
    images: list[Any],
) -> None:
    ours = _our_features(tiny_checkpoint, processor_config, images)
    expected = _hf_features(tiny_hf_model, tiny_hf_image_processor, images)
    config = LlavaNextConfig.from_folder(tiny_checkpoint)
    assert len(ours) == len(expected) == 2
    for features, reference, (height, width) in zip(ours, expected, SIZES, strict=True):
        assert features.shape == (num_image_tokens(config, height, width), 64)
        torch.testing.assert_close(features, reference, atol=1e-5, rtol=1e-5)


def test_no_images_embed_to_nothing(tiny_checkpoint: Path) -> None:
    assert load_llava_next_vision(tiny_checkpoint).embed([]) == []


def test_two_feature_layers_equal_transformers(
    tmp_path: Path,
    tiny_hf_image_processor: Any,
    processor_config: ImageProcessorConfig,
    images: list[Any],
    tiny_hf_config: Any,
) -> None:
    from transformers import LlavaNextForConditionalGeneration

    torch.manual_seed(1)
    # Hidden state 0 (the pre-normed embeddings) and the last layer, concatenated.
    overrides = {"vision_feature_layer": [0, -1], "projector_hidden_act": "silu"}
    model = LlavaNextForConditionalGeneration(tiny_hf_config(**overrides)).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    ours = _our_features(tmp_path, processor_config, images)
    expected = _hf_features(model, tiny_hf_image_processor, images)
    for features, reference in zip(ours, expected, strict=True):
        torch.testing.assert_close(features, reference, atol=1e-5, rtol=1e-5)


def test_full_strategy_is_refused(
    tmp_path: Path, tiny_hf_image_processor: Any, images: list[Any], tiny_hf_config: Any
) -> None:
    from transformers import LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration(
        tiny_hf_config(vision_feature_select_strategy="full")
    ).eval()
    # transformers cannot pack the grid either: CLS makes 17 features per 16-cell patch.
    with pytest.raises(RuntimeError, match="expanded size"):
        _hf_features(model, tiny_hf_image_processor, images)
    model.save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(ValueError, match="'full' is not supported"):
        load_llava_next_vision(tmp_path)


def _prompt_ids(num_tokens: list[int], image_token_id: int) -> torch.Tensor:
    """``[1, 5, <image> x n0, 7, <image> x n1, 9]`` as a batch of one."""
    ids = [1, 5, *[image_token_id] * num_tokens[0], 7, *[image_token_id] * num_tokens[1], 9]
    return torch.tensor([ids])


def test_merged_embeddings_give_transformers_logits(
    tiny_hf_model: Any,
    tiny_checkpoint: Path,
    tiny_hf_image_processor: Any,
    processor_config: ImageProcessorConfig,
    images: list[Any],
) -> None:
    config = LlavaNextConfig.from_folder(tiny_checkpoint)
    input_ids = _prompt_ids(
        [num_image_tokens(config, h, w) for h, w in SIZES], config.image_token_id
    )
    inputs = tiny_hf_image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        expected = tiny_hf_model(
            input_ids=input_ids,
            pixel_values=inputs["pixel_values"],
            image_sizes=inputs["image_sizes"],
        ).logits
        embeds = _our_features(tiny_checkpoint, processor_config, images)
        token_embeds = tiny_hf_model.get_input_embeddings()(input_ids)
        merged = merge_image_embeddings(token_embeds, input_ids, config.image_token_id, embeds)
        hidden = tiny_hf_model.model.language_model(inputs_embeds=merged).last_hidden_state
        logits = tiny_hf_model.lm_head(hidden)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    # Text rows are untouched; the input is not modified in place.
    torch.testing.assert_close(merged[0, :2], token_embeds[0, :2], atol=0, rtol=0)
    assert not torch.equal(merged, token_embeds)


def test_merge_rejects_a_count_mismatch() -> None:
    input_ids = torch.tensor([[1, 100, 100, 2]])
    inputs_embeds = torch.zeros(1, 4, 8)
    with pytest.raises(ValueError) as raised:
        merge_image_embeddings(inputs_embeds, input_ids, 100, [torch.ones(3, 8)])
    assert str(raised.value) == (
        "Image features and image tokens do not match, tokens: 2, features: 3"
    )
    with pytest.raises(ValueError, match="tokens: 2, features: 0"):
        merge_image_embeddings(inputs_embeds, input_ids, 100, [])


def test_merge_without_images_is_a_copy() -> None:
    inputs_embeds = torch.randn(1, 3, 8)
    merged = merge_image_embeddings(inputs_embeds, torch.tensor([[1, 2, 3]]), 100, [])
    assert torch.equal(merged, inputs_embeds) and merged is not inputs_embeds
