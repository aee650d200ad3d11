"""``preprocess`` against transformers 5's ``LlavaNextImageProcessorPil``: the same pixel
values, patch for patch (transformers' batch padding of patches aside); the split between the
front end (raw patches) and the engine (pixel values, no decoding)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tgi_core.contract import ImageInput
from tgi_core.settings.slices import ImageLimits
from tgi_vlm import ImageInputError
from tgi_vlm.llava_next import ImageProcessorConfig, preprocess
from tgi_vlm.llava_next.patches import PATCHES_MIMETYPE, to_rgb
from tgi_vlm.llava_next.processing import processed_image
from tgi_vlm.prompt_encoding import prompt_encoder_for

from .conftest import encode_image, tiny_tokenizer

SIZES = [(10, 10), (50, 70), (70, 50), (5, 200), (200, 5), (33, 33), (100, 37), (64, 64)]


@pytest.fixture(scope="module")
def config(tiny_hf_image_processor: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Our options, read from the preprocessor_config.json transformers writes."""
    folder = tmp_path_factory.mktemp("preprocessor")
    tiny_hf_image_processor.save_pretrained(folder)
    return ImageProcessorConfig.from_folder(folder)


def _hf_pixel_values(processor: Any, image: Image.Image) -> torch.Tensor:
    """transformers' pixel values for one image: ``[num_patches, 3, H, W]``."""
    outputs = processor(images=[image], return_tensors="pt")
    return torch.as_tensor(outputs["pixel_values"][0])


def test_config_from_the_saved_preprocessor_config(config: ImageProcessorConfig) -> None:
    assert config.image_grid_pinpoints == ((32, 64), (64, 32), (64, 64))
    assert config.size_dict == {"shortest_edge": 32}
    assert config.crop_size == (32, 32)
    assert config.resample == Image.Resampling.BICUBIC
    assert config.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_pixel_values_equal_transformers(
    height: int,
    width: int,
    config: ImageProcessorConfig,
    tiny_hf_image_processor: Any,
    random_image: Any,
) -> None:
    image = random_image(height, width, seed=height * 1000 + width)
    processed = preprocess(image, config)
    expected = _hf_pixel_values(tiny_hf_image_processor, image)
    assert processed.image_size == (height, width)
    assert processed.pixel_values.dtype == torch.float32
    assert processed.pixel_values.shape == expected.shape
    torch.testing.assert_close(processed.pixel_values, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK"])
def test_other_modes_convert_like_transformers(
    mode: str, config: ImageProcessorConfig, tiny_hf_image_processor: Any, random_image: Any
) -> None:
    image = random_image(23, 41, mode=mode, seed=5)
    expected = _hf_pixel_values(tiny_hf_image_processor, image)
    torch.testing.assert_close(preprocess(image, config).pixel_values, expected, atol=1e-6, rtol=0)


def test_rgba_transparency_becomes_white() -> None:
    image = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("height", "width", "num_patches"),
    # (64, 32) grid: 2 cells; (32, 64): 2 cells; (64, 64): 4 cells; plus the base image.
    [(10, 10, 3), (50, 70, 5), (5, 200, 3), (200, 5, 3), (64, 64, 5)],
)
def test_base_image_plus_one_patch_per_grid_cell(
    height: int, width: int, num_patches: int, config: ImageProcessorConfig, random_image: Any
) -> None:
    processed = preprocess(random_image(height, width), config)
    assert processed.num_patches == num_patches
    assert processed.pixel_values.shape[1:] == (3, 32, 32)


def test_llava_v16_geometry_equals_transformers(random_image: Any) -> None:
    from transformers import LlavaNextImageProcessorPil

    processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    )
    config = ImageProcessorConfig.from_dict(
        {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}
    )
    image = random_image(500, 460, seed=11)  # fits the 672 x 672 grid best: 2 x 2 cells
    expected = _hf_pixel_values(processor, image)
    processed = preprocess(image, config)
    assert processed.num_patches == expected.shape[0] == 5
    torch.testing.assert_close(processed.pixel_values, expected, atol=1e-6, rtol=0)


def test_the_front_end_sends_raw_patches_and_the_engine_decodes_nothing(
    llava_folder: Path, config: ImageProcessorConfig, random_image: Any, data_url: Any
) -> None:
    """The HTTP worker decodes the image once and cuts it; the engine gets raw patches (the
    same pixel values as ``preprocess``), and refuses an encoded image rather than decode it."""
    encoder = prompt_encoder_for(str(llava_folder), tiny_tokenizer())
    assert encoder is not None
    image = random_image(50, 70, seed=3)
    png = encode_image(image, "PNG")
    _, [sent] = encoder.encode_with_images(f"hello {data_url(png, 'image/png')} world")
    assert sent.mimetype == f"{PATCHES_MIMETYPE};height=32;width=32"
    assert (sent.height, sent.width) == (50, 70)
    assert len(sent.data) == 5 * 32 * 32 * 3  # base image + a 2 x 2 grid, RGB
    torch.testing.assert_close(
        processed_image(sent, config).pixel_values,
        preprocess(image, config).pixel_values,
        atol=0,
        rtol=0,
    )
    with pytest.raises(ValueError, match="not LLaVA-NeXT patches: 'image/png'"):
        processed_image(ImageInput(png, "image/png", 50, 70), config)


def test_the_prompt_encoder_enforces_the_image_limits(llava_folder: Path, data_url: Any) -> None:
    limits = ImageLimits(max_image_pixels=100)
    encoder = prompt_encoder_for(str(llava_folder), tiny_tokenizer(), limits)
    assert encoder is not None
    png = encode_image(Image.new("RGB", (11, 10)), "PNG")
    with pytest.raises(ImageInputError) as raised:
        encoder.encode_with_images(data_url(png, "image/png"))
    assert (
        raised.value.detail == "invalid image: Image size (110 pixels) exceeds limit of 100 pixels"
    )
