"""Building blocks shared by the model families: norm, rotary, MLP, embeddings, LM head."""

from tgi_hpu_kernels.layers.embedding import LMHead, VocabEmbedding
from tgi_hpu_kernels.layers.mlp import GatedMLP
from tgi_hpu_kernels.layers.norm import RMSNorm
from tgi_hpu_kernels.layers.rotary import RopeConfig, RotaryEmbedding, apply_rotary

__all__ = [
    "GatedMLP",
    "LMHead",
    "RMSNorm",
    "RopeConfig",
    "RotaryEmbedding",
    "VocabEmbedding",
    "apply_rotary",
]
