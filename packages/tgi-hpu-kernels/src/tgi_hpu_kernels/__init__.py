"""Model runner for Gaudi (HPU), CUDA and CPU: the one package that touches tensors."""

from tgi_hpu_kernels.__about__ import __version__

__all__ = ["__version__"]
