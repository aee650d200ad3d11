"""TGI-compatible API types, validation, settings, tokenization and the runner contract.

Pure Python: nothing here imports torch or falcon.
"""

from tgi_core.__about__ import __version__

__all__ = ["__version__"]
