"""``ImageInputError``: TGI's image validation errors, one constructor per message.

Each is a ``tgi_core.errors.ValidationError`` (422 ``validation``), so the server answers it
as TGI does, ``Input validation error: <detail>``; ``detail`` is TGI's message alone. The
messages are those of TGI's router (``validation.rs``): the text after the colon is ours
where TGI's comes from a Rust crate (``image``, ``reqwest``), and the same where the crate's
text is easy to reproduce (``base64``'s messages are exact).
"""

from __future__ import annotations

from tgi_core.errors import ValidationError

__all__ = ["ImageInputError"]


class ImageInputError(ValidationError):
    """An image in ``inputs`` that cannot be read: bad markdown, data URL, fetch or bytes."""

    @classmethod
    def invalid_content(cls, content: str) -> ImageInputError:
        """Not an http(s) or data URL, or a data URL that is not ``<mime>;base64,<data>``."""
        return cls(f"invalid image content: {content}")

    @classmethod
    def invalid_base64(cls, reason: str) -> ImageInputError:
        return cls(f"base64 encoding is invalid: {reason}")

    @classmethod
    def invalid_image(cls, reason: str) -> ImageInputError:
        """The bytes are not an image the decoder can read."""
        return cls(f"invalid image: {reason}")

    @classmethod
    def fetch_failed(cls, reason: str) -> ImageInputError:
        return cls(f"Could not fetch image: {reason}")

    @classmethod
    def too_large(cls, num_bytes: int, max_image_fetch_size: int) -> ImageInputError:
        """TGI's message; ``num_bytes`` is what was read when the size was not declared
        (reading stops one byte past the limit)."""
        return cls(
            f"Image size {num_bytes} bytes exceeds maximum allowed size of "
            f"{max_image_fetch_size} bytes"
        )

    @classmethod
    def too_many_pixels(cls, num_pixels: int, max_image_pixels: int) -> ImageInputError:
        """Ours (TGI has no pixel limit), worded as Pillow's decompression-bomb error."""
        return cls.invalid_image(
            f"Image size ({num_pixels} pixels) exceeds limit of {max_image_pixels} pixels"
        )

    @classmethod
    def too_many_images(cls, num_images: int, max_images: int) -> ImageInputError:
        """Ours (TGI has no count limit), worded as TGI's ``stop`` count error."""
        return cls(f"`inputs` supports up to {max_images} images. Given: {num_images}")
