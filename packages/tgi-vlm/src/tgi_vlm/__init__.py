"""Vision-language inputs (markdown images, data URLs) and LLaVA-NeXT."""

from tgi_vlm.__about__ import __version__

__all__ = ["__version__"]
