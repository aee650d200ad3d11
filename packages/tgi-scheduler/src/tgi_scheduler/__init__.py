"""The bucketed continuous-batching scheduler and engine loop (pure Python, no torch)."""

from tgi_scheduler.__about__ import __version__

__all__ = ["__version__"]
