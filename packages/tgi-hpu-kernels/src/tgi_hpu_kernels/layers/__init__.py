"""Building blocks shared by the model families: norm, rotary, MLP, embeddings, LM head, and
the elementwise kernels they call through the device (``kernels.py``)."""

from tgi_hpu_kernels.layers.embedding import LMHead, VocabEmbedding
from tgi_hpu_kernels.layers.kernels import DecoderLayerSpec, LayerKernels, TorchLayerKernels
from tgi_hpu_kernels.layers.linear import Linear
from tgi_hpu_kernels.layers.mlp import GatedMLP
from tgi_hpu_kernels.layers.norm import RMSNorm
from tgi_hpu_kernels.layers.quantized import (
    QuantizedKernels,
    QuantizedLinear,
    QuantizedLMHead,
    QuantizedWeight,
    WeightQuantization,
)
from tgi_hpu_kernels.layers.rotary import RopeConfig, RotaryEmbedding, apply_rotary

__all__ = [
    "DecoderLayerSpec",
    "GatedMLP",
    "LMHead",
    "LayerKernels",
    "Linear",
    "QuantizedKernels",
    "QuantizedLMHead",
    "QuantizedLinear",
    "QuantizedWeight",
    "RMSNorm",
    "RopeConfig",
    "RotaryEmbedding",
    "TorchLayerKernels",
    "VocabEmbedding",
    "WeightQuantization",
    "apply_rotary",
]
