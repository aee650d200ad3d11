"""Sparse mixture of experts (Mixtral): a router picks ``top_k`` of ``num_experts`` gated SiLU
MLPs for each token, and their outputs are summed with the router's weights.

Dispatch is batched: the step's (token, expert) pairs are sorted by expert, every expert that
got any runs its gate/up and down projection once on its rows, and the weighted rows are
scatter-added back to their tokens. The experts are ``GatedMLP``s of ``Linear`` layers, so
weight-only quantization swaps them like any other projection; the router is not a ``Linear``
and stays dense (an error there changes which experts run, not only what they output).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tgi_hpu_kernels.layers.kernels import LayerKernels
from tgi_hpu_kernels.layers.mlp import GatedMLP

__all__ = ["SparseExperts", "SparseMoeBlock", "TopKRouter"]


class TopKRouter(nn.Module):
    """``weight`` ``[num_experts, hidden]`` (no bias): softmax over the experts in float32,
    the ``top_k`` best, their weights renormalised to sum to 1 (transformers' Mixtral)."""

    def __init__(
        self, hidden_size: int, num_experts: int, top_k: int, kernels: LayerKernels
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        self.top_k = top_k
        self._kernels = kernels

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[N, hidden]`` -> (float32 weights, expert indices), each ``[N, top_k]``."""
        logits = self._kernels.linear(x, self.weight, None)
        probs = torch.softmax(logits.float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        return weights / weights.sum(dim=-1, keepdim=True), experts


class SparseExperts(nn.ModuleList):
    """The experts (``experts.{i}.gate_up_proj`` / ``down_proj``), called once per step with
    the router's choice; its output is the weighted sum, so tensor parallelism sums it over
    the ranks once (each rank holds a slice of every expert's intermediate width)."""

    def __init__(
        self, num_experts: int, hidden_size: int, intermediate_size: int, kernels: LayerKernels
    ) -> None:
        super().__init__(
            GatedMLP(hidden_size, intermediate_size, kernels=kernels) for _ in range(num_experts)
        )

    def forward(self, x: Tensor, weights: Tensor, experts: Tensor) -> Tensor:
        """``x`` ``[N, hidden]``, ``weights``/``experts`` ``[N, top_k]`` -> ``[N, hidden]``."""
        flat = experts.flatten()
        order = flat.argsort(stable=True)  # the pairs grouped by expert
        tokens = order // experts.shape[1]
        counts = torch.bincount(flat, minlength=len(self)).tolist()
        groups = torch.split(x.index_select(0, tokens), counts)
        outputs = [expert(rows) for expert, rows, n in zip(self, groups, counts, strict=True) if n]
        # weighted in float32 as transformers does, then back to the model's dtype
        weighted = (torch.cat(outputs) * weights.flatten()[order].unsqueeze(1)).to(x.dtype)
        return torch.zeros_like(x).index_add_(0, tokens, weighted)


class SparseMoeBlock(nn.Module):
    """Router (``gate``) then experts: the MLP of a Mixtral decoder layer."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        *,
        num_experts: int,
        top_k: int,
        kernels: LayerKernels,
    ) -> None:
        super().__init__()
        self.gate = TopKRouter(hidden_size, num_experts, top_k, kernels)
        self.experts = SparseExperts(num_experts, hidden_size, intermediate_size, kernels)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.experts(x, *self.gate(x))
        return out
