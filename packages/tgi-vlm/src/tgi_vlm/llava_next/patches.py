"""LLaVA-NeXT's image patches (torch-free): every step of preprocessing that reads pixels.

``image_patches`` does what transformers' ``LlavaNextImageProcessor`` (PIL backend) does with
Pillow: convert to RGB, pick the best resolution among ``image_grid_pinpoints``, resize the
image to fit it keeping the aspect ratio, pad it centred with black, cut it into crop-size
patches, prepend the whole image squashed to the base size, then resize and centre-crop every
patch. Pillow's ``crop`` fills outside the image with zeros, which is transformers' padded
centre crop.

The front end runs this in the HTTP worker, on the image it decoded (once) while validating
the prompt: ``patches_input`` packs the patches as raw RGB into the ``ImageInput`` the engine
receives (``PATCHES_MIMETYPE``, its size in the MIME parameters), so the engine never sees an
encoded image and never decodes one; it only rescales and normalizes
(``tgi_vlm.llava_next.processing``). The bytes are bounded by the grid, not by the image.
"""

from __future__ import annotations

from collections.abc import Mapping

from PIL import Image

from tgi_core.contract import ImageInput
from tgi_vlm.llava_next.config import ImageProcessorConfig
from tgi_vlm.llava_next.grid import patch_output_size, select_best_resolution

__all__ = ["PATCHES_MIMETYPE", "image_patches", "patches_input", "patches_shape", "to_rgb"]

PATCHES_MIMETYPE = "image/x-llava-next-patches"


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, transparency composited onto white (transformers' ``convert_to_rgb``)."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        return image.convert("RGB")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def image_patches(image: Image.Image, config: ImageProcessorConfig) -> list[Image.Image]:
    """The base image, then the grid patches row by row: RGB, resized and centre-cropped."""
    # The vision tower takes 3 channels; without do_convert_rgb transformers would pass
    # other modes through and fail later, so they are converted plainly here.
    rgb = to_rgb(image) if config.do_convert_rgb else image.convert("RGB")
    original_size = (rgb.height, rgb.width)
    size = config.size_dict
    if "height" in size and "width" in size:
        base_size = (size["height"], size["width"])
    else:
        base_size = (size["shortest_edge"], size["shortest_edge"])
    best = select_best_resolution(original_size, config.image_grid_pinpoints)
    fitted = _resize(rgb, patch_output_size(original_size, best), config.resample)
    padded = _pad_centered(fitted, best)
    patches = [_resize(rgb, base_size, config.resample), *_divide(padded, config.crop_size[0])]
    return [_finish_patch(patch, config) for patch in patches]


def patches_input(image: Image.Image, config: ImageProcessorConfig) -> ImageInput:
    """The ``ImageInput`` the engine gets for ``image``: its patches as raw RGB bytes.

    Raises:
        ValueError: the patches differ in size (a processor config without centre crop
            whose size does not make them square; the vision tower could not stack them).
    """
    patches = image_patches(image, config)
    height, width = patches[0].height, patches[0].width
    if any(patch.size != (width, height) for patch in patches):
        raise ValueError("the image processor config gives patches of different sizes")
    data = b"".join(patch.tobytes() for patch in patches)
    mimetype = f"{PATCHES_MIMETYPE};height={height};width={width}"
    return ImageInput(data, mimetype, image.height, image.width)


def patches_shape(image: ImageInput) -> tuple[int, int, int]:
    """(number of patches, patch height, patch width) of a ``patches_input``.

    Raises:
        ValueError: ``image`` is not one (an encoded image: the engine does not decode).
    """
    kind, _, params = image.mimetype.partition(";")
    fields = {key: value for key, _, value in (p.partition("=") for p in params.split(";"))}
    height, width = fields.get("height", ""), fields.get("width", "")
    if kind != PATCHES_MIMETYPE or not (height.isdigit() and width.isdigit()):
        raise ValueError(f"not LLaVA-NeXT patches: {image.mimetype!r}")
    patch_bytes = int(height) * int(width) * 3
    if patch_bytes == 0 or len(image.data) % patch_bytes:
        raise ValueError(f"{len(image.data)} bytes are not whole {height}x{width} RGB patches")
    return len(image.data) // patch_bytes, int(height), int(width)


def _resize(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    height, width = size
    return image.resize((width, height), resample=Image.Resampling(resample))


def _pad_centered(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    # The extra pixel of an odd margin goes to the bottom / right, as in transformers.
    target_height, target_width = target
    padded = Image.new("RGB", (target_width, target_height), (0, 0, 0))
    padded.paste(image, ((target_width - image.width) // 2, (target_height - image.height) // 2))
    return padded


def _divide(image: Image.Image, patch_size: int) -> list[Image.Image]:
    """Row-major patches; edge patches are cut short when the size is not a multiple."""
    return [
        image.crop(
            (left, top, min(left + patch_size, image.width), min(top + patch_size, image.height))
        )
        for top in range(0, image.height, patch_size)
        for left in range(0, image.width, patch_size)
    ]


def _resize_output_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    """transformers' PIL-backend ``resize`` target for a ``size`` dict."""
    if "height" in size and "width" in size:
        return size["height"], size["width"]
    if "shortest_edge" not in size:
        raise ValueError(f"size must hold 'shortest_edge' or 'height' and 'width'; got {size}")
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _finish_patch(patch: Image.Image, config: ImageProcessorConfig) -> Image.Image:
    """transformers' per-patch resize and centre crop (zero-padded when the patch is small:
    the image lands at the same offset as in transformers' padded crop)."""
    if config.do_resize:
        patch = _resize(
            patch, _resize_output_size(patch.height, patch.width, config.size_dict), config.resample
        )
    if config.do_center_crop:
        crop_height, crop_width = config.crop_size
        top, left = (patch.height - crop_height) // 2, (patch.width - crop_width) // 2
        patch = patch.crop((left, top, left + crop_width, top + crop_height))
    return patch
