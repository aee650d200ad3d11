"""LLaVA-NeXT token accounting against transformers 5's ``LlavaNextProcessor``: the number of
``<image>`` placeholders per image size, and the text TGI's router tokenizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tgi_vlm import ImageChunk, TextChunk
from tgi_vlm.llava_next import (
    IMAGE_TOKEN,
    ClipVisionConfig,
    LlavaNextConfig,
    image_placeholder,
    num_image_tokens,
    tokenizer_query,
)

SIDES = [1, 2, 7, 31, 32, 33, 50, 64, 65, 100, 333]
EXTREME_SIZES = [(1, 1000), (1000, 1), (3, 997), (997, 3), (2, 64), (64, 2), (1, 1)]


@pytest.fixture(scope="module")
def config(tiny_checkpoint: Path) -> LlavaNextConfig:
    return LlavaNextConfig.from_folder(tiny_checkpoint)


def _hf_count(processor: Any, height: int, width: int) -> int:
    """Placeholders in transformers' processed ``input_ids`` for one image."""
    image = Image.new("RGB", (width, height), (120, 30, 200))
    inputs = processor(images=[image], text="hello <image> world", return_tensors="pt")
    return int((inputs["input_ids"] == processor.image_token_id).sum())


def test_config_from_a_saved_checkpoint(config: LlavaNextConfig) -> None:
    assert config.vision.image_size == 32
    assert config.vision.patch_size == 8
    assert config.vision.num_hidden_layers == 3
    assert config.vision.hidden_act == "quick_gelu"
    assert config.text_hidden_size == 64
    assert config.image_token_id == 100
    assert config.image_grid_pinpoints == ((32, 64), (64, 32), (64, 64))
    assert config.feature_layers == (-2,)
    assert config.vision_feature_select_strategy == "default"


@pytest.mark.parametrize("height", SIDES)
def test_count_equals_transformers_processor(
    height: int, config: LlavaNextConfig, tiny_hf_processor: Any
) -> None:
    for width in SIDES:
        expected = _hf_count(tiny_hf_processor, height, width)
        assert num_image_tokens(config, height, width) == expected, (height, width)


@pytest.mark.parametrize(("height", "width"), EXTREME_SIZES)
def test_count_for_extreme_aspect_ratios(
    height: int, width: int, config: LlavaNextConfig, tiny_hf_processor: Any
) -> None:
    assert num_image_tokens(config, height, width) == _hf_count(tiny_hf_processor, height, width)


@pytest.fixture(scope="module")
def llava_v16_processor(tiny_hf_processor: Any) -> Any:
    """The processor geometry of llava-v1.6 checkpoints: 336 px CLIP, 14 px patches,
    transformers' default pinpoints (token counts only: no image is processed)."""
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tiny_hf_processor.tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


@settings(max_examples=300, deadline=None)
@given(height=st.integers(1, 5000), width=st.integers(1, 5000))
def test_count_for_llava_v16_geometry(height: int, width: int, llava_v16_processor: Any) -> None:
    # An absent vision_config is LLaVA-NeXT's CLIP ViT-L/14-336; pinpoints default too.
    config = LlavaNextConfig.from_dict({"model_type": "llava_next"})
    [expected] = llava_v16_processor._get_num_multimodal_tokens(
        image_sizes=[(height, width)]
    ).num_image_tokens
    assert num_image_tokens(config, height, width) == expected


def test_full_strategy_keeps_the_cls_feature(tiny_hf_processor: Any, tiny_checkpoint: Path) -> None:
    from transformers import LlavaNextProcessor

    processor = LlavaNextProcessor(
        image_processor=tiny_hf_processor.image_processor,
        tokenizer=tiny_hf_processor.tokenizer,
        patch_size=8,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=1,
    )
    config = LlavaNextConfig(
        vision=ClipVisionConfig(image_size=32, patch_size=8),
        image_grid_pinpoints=((32, 64), (64, 32), (64, 64)),
        vision_feature_select_strategy="full",
    )
    for height, width in [(10, 10), (50, 70), (1, 300)]:
        assert num_image_tokens(config, height, width) == _hf_count(processor, height, width)


def test_tokenizer_query_tokenizes_like_the_processor(
    config: LlavaNextConfig, tiny_hf_processor: Any, make_image: Any
) -> None:
    sizes = [(10, 10), (50, 70)]
    images = [
        ImageChunk(data=make_image(h, w), mimetype="image/png", height=h, width=w) for h, w in sizes
    ]
    chunks = [TextChunk("hello "), images[0], TextChunk(" world "), images[1]]
    query = tokenizer_query(chunks, config)
    assert query == ("hello " + image_placeholder(config, 10, 10) + " world " + IMAGE_TOKEN * 70)
    pil_images = [Image.new("RGB", (w, h)) for h, w in sizes]
    expected = tiny_hf_processor(
        images=pil_images, text="hello <image> world <image>", return_tensors="pt"
    )["input_ids"][0].tolist()
    assert tiny_hf_processor.tokenizer(query)["input_ids"] == expected


def test_config_rejects_what_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="is not llava_next"):
        LlavaNextConfig.from_dict({"model_type": "llava"})
    with pytest.raises(ValueError, match="only clip_vision_model"):
        LlavaNextConfig.from_dict({"vision_config": {"model_type": "siglip_vision_model"}})
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        LlavaNextConfig.from_dict({"vision_feature_select_strategy": "cls"})
