"""Model runner for Gaudi (HPU), CUDA and CPU: the one package that touches tensors.

``TorchModelRunner`` implements ``tgi_core.contract.ModelRunner``; ``select_device`` picks the
backend; ``load_model`` builds a model from a safetensors folder, a GGUF file or the Hub.
Submodules import torch; this package's ``__init__`` imports them lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tgi_hpu_kernels.__about__ import __version__

if TYPE_CHECKING:
    from tgi_hpu_kernels.device import select_device
    from tgi_hpu_kernels.loader import load_model
    from tgi_hpu_kernels.runner import TorchModelRunner

__all__ = ["TorchModelRunner", "__version__", "load_model", "select_device"]

_LAZY = {
    "TorchModelRunner": "tgi_hpu_kernels.runner",
    "load_model": "tgi_hpu_kernels.loader",
    "select_device": "tgi_hpu_kernels.device",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tgi_hpu_kernels' has no attribute {name!r}")
