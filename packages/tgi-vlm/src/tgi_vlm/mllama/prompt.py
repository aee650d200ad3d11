"""Mllama's prompt: each image is one ``<|image|>`` token where the markdown image was.

As transformers' ``MllamaProcessor``: the image costs one prompt token (its pixels reach the
model through cross-attention, not as tokens), and the text after an image token attends to
that image. The image travels to the engine as its encoded bytes (``ImageInput``), decoded
and tiled there (``images.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tgi_core.contract import ImageInput
from tgi_core.errors import ValidationError
from tgi_core.settings.slices import ImageLimits
from tgi_core.validation.generate import TextEncoder
from tgi_vlm.fetch import DEFAULT_IMAGE_LIMITS, LoadedImage
from tgi_vlm.inputs import read_inputs

__all__ = ["IMAGE_TOKEN", "MllamaPromptEncoder"]

IMAGE_TOKEN = "<|image|>"


class MllamaPromptEncoder:
    """``tokenizer`` with Mllama's image tokens (an ``ImagePromptEncoder``)."""

    def __init__(
        self,
        tokenizer: TextEncoder,
        image_token_id: int,
        limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
    ) -> None:
        self._tokenizer = tokenizer
        self._image_token_id = image_token_id
        self._limits = limits

    @classmethod
    def from_folder(
        cls, folder: Path, tokenizer: TextEncoder, limits: ImageLimits = DEFAULT_IMAGE_LIMITS
    ) -> MllamaPromptEncoder:
        """The encoder of a local Mllama folder (its ``config.json``'s image token)."""
        config = json.loads((folder / "config.json").read_text())
        return cls(tokenizer, int(config["image_token_index"]), limits)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> Sequence[int]:
        return self.encode_with_images(text, add_special_tokens=add_special_tokens)[0]

    def encode_with_images(
        self, text: str, *, add_special_tokens: bool = True
    ) -> tuple[Sequence[int], tuple[ImageInput, ...]]:
        parts: list[str] = []
        images: list[ImageInput] = []
        for part in read_inputs(text, self._limits):
            if isinstance(part, LoadedImage):
                chunk = part.chunk
                images.append(ImageInput(chunk.data, chunk.mimetype, chunk.height, chunk.width))
                parts.append(IMAGE_TOKEN)
            else:
                parts.append(part.text)
        ids = self._tokenizer.encode("".join(parts), add_special_tokens=add_special_tokens)
        # Each image token opens that image's span of the mask: one the text wrote itself
        # would have no pixels behind it.
        if list(ids).count(self._image_token_id) != len(images):
            raise ValidationError(
                f"the prompt's text holds {IMAGE_TOKEN} tokens of its own: "
                "give images as ![](url) only"
            )
        return ids, tuple(images)
