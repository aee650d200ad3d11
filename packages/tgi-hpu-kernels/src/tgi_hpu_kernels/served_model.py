"""The three kinds of model a runner serves, and the module its device runs each step.

A native family (``models/``), transformers' model on our paged cache
(``models/transformers_fallback.py``) or transformers' model recomputed every step
(``models/transformers_recompute.py``) all take a step's token rows and answer final hidden
states; this module names which one serves and wraps it for the device's step runner.
"""

from __future__ import annotations

from torch import Tensor, nn

from tgi_hpu_kernels.attention import AttentionMetadata
from tgi_hpu_kernels.device import Device
from tgi_hpu_kernels.device.base import EagerStepRunner, StepRunner
from tgi_hpu_kernels.kv_cache import KVCache
from tgi_hpu_kernels.models.llama import LlamaForCausalLM
from tgi_hpu_kernels.models.transformers_fallback import TransformersCausalLM
from tgi_hpu_kernels.models.transformers_recompute import RecomputingCausalLM

__all__ = ["ServedModel", "StepModule", "describe_implementation", "step_runner_for"]

ServedModel = LlamaForCausalLM | TransformersCausalLM | RecomputingCausalLM


class StepModule(nn.Module):
    """The graph-capturable part of a step: tokens in, final hidden states out."""

    def __init__(self, model: ServedModel, kv: KVCache) -> None:
        super().__init__()
        self.model = model
        self.kv = kv

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor,
        attn: AttentionMetadata,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        hidden: Tensor = self.model(input_ids, positions, attn, self.kv, inputs_embeds)
        return hidden


def step_runner_for(device: Device, model: ServedModel, kv: KVCache) -> StepRunner:
    """The device's step runner (graphs where it has them) around ``model``; a recomputed
    model runs eagerly: its shapes are its sequences' lengths, which no graph fits."""
    module = StepModule(model, kv)
    if isinstance(model, RecomputingCausalLM):
        return EagerStepRunner(module)
    return device.step_runner(module)


def describe_implementation(model: ServedModel) -> str:
    """Which code computes the model: a native family or transformers' (the fallback)."""
    if isinstance(model, TransformersCausalLM):
        return f"transformers {type(model.hf_model).__name__} (fallback)"
    if isinstance(model, RecomputingCausalLM):
        return f"transformers {type(model.hf_model).__name__} (fallback, recomputed every step)"
    return f"native {type(model).__name__}"
