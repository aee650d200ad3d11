"""Mixtral: the Mistral decoder with a sparse mixture of experts in place of the MLP.

Each layer's MLP is ``layers/moe.py``'s block: a router (``mlp.gate``) sends every token to
``num_experts_per_tok`` of ``num_local_experts`` gated SiLU MLPs (``mlp.experts.{i}``).
Checkpoints come in two layouts, both read by ``checkpoint_tensors``: published ones (and
what transformers 5's ``save_pretrained`` writes by default) store
``block_sparse_moe.experts.{i}.w1/w2/w3``, transformers 5's in-memory layout (saved with
``save_original_format=False``) fuses every expert into 3-D ``mlp.experts.gate_up_proj``
``[E, 2I, H]`` and ``mlp.experts.down_proj`` ``[E, H, I]``; both become per-expert
``gate_proj``/``up_proj``/``down_proj``, so loading, quantization and sharding are Llama's.
Tensor parallelism splits every expert's intermediate width and sums the block's output
over the ranks once; the router is replicated. The CPU's fused decoder stack implements a
dense MLP, so this family never uses it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from tgi_hpu_kernels.layers.moe import SparseMoeBlock
from tgi_hpu_kernels.layers.rotary import RotaryEmbedding
from tgi_hpu_kernels.models.config import ModelConfig
from tgi_hpu_kernels.models.llama import ModelBackend
from tgi_hpu_kernels.models.mistral import MistralForCausalLM
from tgi_hpu_kernels.parallel.sharding import TensorParallelLayout

__all__ = ["MIXTRAL_LAYOUT", "MixtralConfig", "MixtralForCausalLM"]

# Experts' gate/up split by rows as Llama's; ".mlp.experts." names both the experts' down
# projections (split by columns: gate/up match a column name first) and the module whose
# output, the block's weighted sum, is all-reduced: one sum per layer, not one per expert.
MIXTRAL_LAYOUT = TensorParallelLayout(
    column=(".q_proj.", ".k_proj.", ".v_proj.", ".gate_proj.", ".up_proj."),
    row=(".o_proj.", ".mlp.experts."),
)

_CLASSIC = re.compile(r"(.*)\.block_sparse_moe\.(?:gate\.weight|experts\.(\d+)\.(w[123])\.weight)$")
_CLASSIC_NAMES = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
_FUSED = re.compile(r"(.*)\.mlp\.experts\.(gate_up_proj|down_proj)$")


@dataclass(frozen=True, slots=True)
class MixtralConfig(ModelConfig):
    num_local_experts: int = 8
    num_experts_per_tok: int = 2


def _expert_tensors(name: str, tensor: Tensor) -> Iterator[tuple[str, Tensor]]:
    """One checkpoint tensor as per-expert ``mlp.experts.{i}.<proj>.weight`` tensors."""
    classic = _CLASSIC.match(name)
    if classic is not None:
        prefix, expert, proj = classic.groups()
        if expert is None:
            yield f"{prefix}.mlp.gate.weight", tensor
        else:
            yield f"{prefix}.mlp.experts.{expert}.{_CLASSIC_NAMES[proj]}.weight", tensor
        return
    fused = _FUSED.match(name)
    if fused is None:
        yield name, tensor
        return
    prefix, proj = fused.groups()
    for expert, weight in enumerate(tensor.unbind(0)):
        base = f"{prefix}.mlp.experts.{expert}"
        if proj == "down_proj":
            yield f"{base}.down_proj.weight", weight
        else:  # [gate; up] stacked by rows, as transformers concatenates w1 then w3
            gate, up = weight.chunk(2, dim=0)
            yield f"{base}.gate_proj.weight", gate
            yield f"{base}.up_proj.weight", up


class MixtralForCausalLM(MistralForCausalLM):
    tp_layout: ClassVar[TensorParallelLayout] = MIXTRAL_LAYOUT

    def __init__(
        self, config: ModelConfig, *, backend: ModelBackend, rotary: RotaryEmbedding
    ) -> None:
        if not isinstance(config, MixtralConfig):
            raise TypeError("MixtralForCausalLM needs a MixtralConfig (from parse_config)")
        super().__init__(config, backend=backend, rotary=rotary)
        for layer in self.model.layers:  # the dense MLPs, built on meta, are replaced
            layer.mlp = SparseMoeBlock(
                config.hidden_size,
                config.intermediate_size,
                num_experts=config.num_local_experts,
                top_k=config.num_experts_per_tok,
                kernels=backend,
            )
        self.model.fuse_layers = False  # the fused stack's layer has a dense MLP

    @classmethod
    def parse_config(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """Mistral's fields plus the experts; ``num_experts_per_tok`` must not exceed them."""
        config = super().parse_config(raw)
        experts, top_k = (
            int(raw.get("num_local_experts", 8)),
            int(raw.get("num_experts_per_tok", 2)),
        )
        if not 0 < top_k <= experts:
            raise ValueError(
                f"num_experts_per_tok ({top_k}) must be between 1 and num_local_experts ({experts})"
            )
        fields = {name: getattr(config, name) for name in ModelConfig.__dataclass_fields__}
        return MixtralConfig(**fields, num_local_experts=experts, num_experts_per_tok=top_k)

    @classmethod
    def checkpoint_tensors(
        cls, weights: Iterable[tuple[str, Tensor]], raw: Mapping[str, Any]
    ) -> Iterator[tuple[str, Tensor]]:
        """Both expert layouts (classic ``block_sparse_moe.experts.{i}.w1/w2/w3``, or
        transformers 5's fused 3-D ``mlp.experts.*``) as per-expert Llama-named tensors."""
        for name, tensor in weights:
            yield from _expert_tensors(name, tensor)
