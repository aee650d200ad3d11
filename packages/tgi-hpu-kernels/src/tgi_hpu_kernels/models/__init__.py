"""Model families (Llama, Mistral, Qwen2) and the registry that picks one for a checkpoint."""

from tgi_hpu_kernels.models.config import ModelConfig
from tgi_hpu_kernels.models.registry import (
    SUPPORTED_MODEL_TYPES,
    UnsupportedModelError,
    resolve_model_class,
)

__all__ = ["SUPPORTED_MODEL_TYPES", "ModelConfig", "UnsupportedModelError", "resolve_model_class"]
