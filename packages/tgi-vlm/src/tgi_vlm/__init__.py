"""Vision-language inputs (markdown images, data URLs) and LLaVA-NeXT.

``split_inputs`` turns a prompt into text and image chunks as TGI's router does (images
fetched and checked within ``ImageLimits``, ``ImageInputError`` with TGI's messages
otherwise); the model-specific parts live in subpackages (``tgi_vlm.llava_next``), each
described by a ``VlmFamily`` that ``tgi_vlm.registry`` lists by ``model_type`` (what the
server asks). Nothing imported here needs torch.
"""

from tgi_vlm.__about__ import __version__
from tgi_vlm.chunks import ImageChunk, InputChunk, TextChunk, chunks_to_string
from tgi_vlm.errors import ImageInputError
from tgi_vlm.fetch import DEFAULT_IMAGE_LIMITS, LoadedImage, fetch_image
from tgi_vlm.inputs import has_images, image_spans, images_of, read_inputs, split_inputs

__all__ = [
    "DEFAULT_IMAGE_LIMITS",
    "ImageChunk",
    "ImageInputError",
    "InputChunk",
    "LoadedImage",
    "TextChunk",
    "__version__",
    "chunks_to_string",
    "fetch_image",
    "has_images",
    "image_spans",
    "images_of",
    "read_inputs",
    "split_inputs",
]
