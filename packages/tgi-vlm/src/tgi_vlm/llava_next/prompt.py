"""The front end's LLaVA-NeXT prompt encoder (torch-free): markdown images in, ids out.

``LlavaNextPromptEncoder`` implements ``tgi_core.validation.ImagePromptEncoder``: it reads
the prompt's ``![](url)`` images (``read_inputs``: counted, fetched, checked and decoded once,
within ``ImageLimits``, TGI's messages on a bad image), tokenizes ``tokenizer_query`` (each
image as its ``<image>`` placeholders, so ``max_input_tokens`` counts image features, as TGI's
router does) and hands each image to the engine as the raw patches the vision tower takes
(``patches_input``), cut here in the HTTP worker so that the engine decodes nothing.
``tgi_vlm.registry`` builds it for a local ``llava_next`` folder (``llava_next/family.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tgi_core.contract import ImageInput
from tgi_core.errors import ValidationError
from tgi_core.settings.slices import ImageLimits
from tgi_core.validation.generate import TextEncoder
from tgi_vlm.chunks import InputChunk
from tgi_vlm.fetch import DEFAULT_IMAGE_LIMITS, LoadedImage
from tgi_vlm.inputs import read_inputs
from tgi_vlm.llava_next.config import ImageProcessorConfig, LlavaNextConfig
from tgi_vlm.llava_next.patches import patches_input
from tgi_vlm.llava_next.tokens import IMAGE_TOKEN, num_image_tokens, tokenizer_query

__all__ = ["LlavaNextPromptEncoder"]


class LlavaNextPromptEncoder:
    """``tokenizer`` with LLaVA-NeXT's image placeholders (an ``ImagePromptEncoder``)."""

    def __init__(
        self,
        tokenizer: TextEncoder,
        config: LlavaNextConfig,
        processor: ImageProcessorConfig,
        limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
    ) -> None:
        self._tokenizer = tokenizer
        self._config = config
        self._processor = processor
        self._limits = limits

    @classmethod
    def from_folder(
        cls, folder: Path, tokenizer: TextEncoder, limits: ImageLimits = DEFAULT_IMAGE_LIMITS
    ) -> LlavaNextPromptEncoder:
        """The encoder of a local LLaVA-NeXT folder (``config.json``,
        ``preprocessor_config.json``)."""
        config = LlavaNextConfig.from_folder(folder)
        return cls(tokenizer, config, ImageProcessorConfig.from_folder(folder), limits)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> Sequence[int]:
        return self.encode_with_images(text, add_special_tokens=add_special_tokens)[0]

    def encode_with_images(
        self, text: str, *, add_special_tokens: bool = True
    ) -> tuple[Sequence[int], tuple[ImageInput, ...]]:
        chunks: list[InputChunk] = []
        inputs: list[ImageInput] = []
        # One image's pixels at a time: each is cut into patches and dropped before the next.
        for part in read_inputs(text, self._limits):
            if isinstance(part, LoadedImage):
                chunks.append(part.chunk)
                inputs.append(patches_input(part.image, self._processor))
            else:
                chunks.append(part)
        query = tokenizer_query(chunks, self._config)
        ids = self._tokenizer.encode(query, add_special_tokens=add_special_tokens)
        images = tuple(inputs)
        if images:
            # The runner writes exactly one feature per placeholder: a literal `<image>` in
            # the text would leave features and placeholders unmatched and fail the batch.
            expected = sum(num_image_tokens(self._config, i.height, i.width) for i in images)
            if list(ids).count(self._config.image_token_id) != expected:
                raise ValidationError(
                    f"the prompt's text holds {IMAGE_TOKEN} placeholders of its own: "
                    "give images as ![](url) only"
                )
        return ids, images
