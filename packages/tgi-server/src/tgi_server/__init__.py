"""The TGI-compatible HTTP service: Falcon app, Gunicorn, engine process and launcher."""

from tgi_server.__about__ import __version__

__all__ = ["__version__"]
