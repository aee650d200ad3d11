"""LoRA adapters applied in the batch: each sequence with its own adapter, none merged.

Every adapted projection (a merged one such as ``qkv_proj`` included) gets one forward hook
holding all adapters' pairs side by side: ``A`` ``[R, in]`` stacks every adapter's and
part's rows, ``B`` ``[out, R]`` places each pair's columns in its part's output rows, and
``columns`` ``[R]`` says which adapter each rank column belongs to. A step computes
``((x @ A.T) * (row_adapter == columns)) @ B.T`` once per projection: a token's rank
columns of other adapters are zeroed, so a mixed batch costs two thin matmuls over
``R = sum of ranks`` whatever the mix, and base-only steps skip them.

The hooks run before the tensor-parallel all-reduce hook of a row-parallel projection
(``prepend``), so each rank adds its partial delta to its partial output and the sum is
exact; ``A`` of a row-parallel and ``B`` of a column-parallel projection are sliced as
their base weight is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tgi_core.contract import DecodeItem, PrefillItem, StepPlan
from tgi_hpu_kernels.lora.checkpoint import LoraWeights
from tgi_hpu_kernels.models.llama import LlamaForCausalLM
from tgi_hpu_kernels.parallel.sharding import shard_weights

__all__ = ["LoraAdapters"]


@dataclass
class _Pair:
    adapter: int  # 1-based index; 0 is the base model
    rows: tuple[int, int]  # (first output row, row count) of its part
    a: Tensor
    b: Tensor


@dataclass
class _Projection:
    """One projection's hook: every adapter's pairs, side by side."""

    adapters: LoraAdapters
    a: Tensor  # [R, in]
    b: Tensor  # [out, R]
    columns: Tensor  # [R] adapter index of each rank column

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        rows = self.adapters.row_adapters
        if rows is None:  # no sequence of this step uses an adapter
            return output
        low = args[0] @ self.a.T
        low = low * (rows[:, None] == self.columns).to(low.dtype)
        return torch.addmm(output, low, self.b.T)


@dataclass
class LoraAdapters:
    """The loaded adapters (``ids``, index ``i + 1`` each) and which rows of the current
    step use which."""

    ids: tuple[str, ...]
    row_adapters: Tensor | None = None  # [N] adapter index per token row, this step

    @classmethod
    def attach(
        cls,
        model: LlamaForCausalLM,
        adapters: Sequence[LoraWeights],
        raw_config: Mapping[str, Any],
        *,
        rank: int = 0,
        num_shard: int = 1,
    ) -> LoraAdapters:
        """Hooks ``adapters`` onto ``model``'s projections (this rank's slices).

        Each B goes through the family's ``checkpoint_tensors`` as a weight of its
        projection would (``raw_config``: the checkpoint's), so a family that splits fused
        projections or reorders rows at load (Phi-3) splits and reorders B the same way.

        Raises:
            ValueError: an adapter adapts a layer the model does not have, or its shapes do
                not fit the layer.
        """
        manager = cls(tuple(adapter.adapter_id for adapter in adapters))
        # the whole model's KV heads (model.config is this rank's share): k/v B's are sliced
        # by KV head, replicated when fewer than num_shard, as their base weights
        num_kv_heads = type(model).parse_config(raw_config).num_key_value_heads
        modules = dict(model.named_modules())
        weight = next(model.parameters())
        pairs: dict[str, list[_Pair]] = {}
        for index, adapter in enumerate(adapters, start=1):
            for name, (a, full_b) in adapter.pairs.items():
                converted = type(model).checkpoint_tensors([(f"{name}.weight", full_b)], raw_config)
                for weight_name, b in converted:
                    module_name, pair = _pair(
                        model,
                        modules,
                        adapter=adapter.adapter_id,
                        index=index,
                        weight_name=weight_name,
                        halves=(a, b),
                        shard=(rank, num_shard, num_kv_heads),
                    )
                    pair.a, pair.b = pair.a.to(weight.dtype), pair.b.to(weight.dtype)
                    pairs.setdefault(module_name, []).append(pair)
        for module_name, module_pairs in pairs.items():
            module = modules[module_name]
            hook = _stack(manager, module_pairs, int(module.out_features), weight.device)
            module.register_forward_hook(hook, prepend=True)
        return manager

    def index_of(self, adapter_id: str | None) -> int | None:
        """0 for the base model, the adapter's index, or None when it is not loaded."""
        if adapter_id is None:
            return 0
        return self.ids.index(adapter_id) + 1 if adapter_id in self.ids else None

    def begin_step(
        self, plan: StepPlan, token_offsets: Sequence[int], num_rows: int, device: torch.device
    ) -> None:
        """Which adapter each of the step's ``num_rows`` token rows uses (padding: none)."""
        rows = [0] * num_rows
        items: Sequence[PrefillItem | DecodeItem] = plan.prefill or plan.decode
        for item, start in zip(items, token_offsets, strict=True):
            index = self.index_of(item.adapter_id) or 0  # unknown ids never get here: prepare
            if index:
                count = (
                    1 + len(item.draft)  # the last token and the draft (--speculate)
                    if isinstance(item, DecodeItem)
                    else len(item.token_ids) - item.num_cached_tokens
                )
                rows[start : start + count] = [index] * count
        self.row_adapters = torch.tensor(rows, device=device) if any(rows) else None


def _pair(
    model: LlamaForCausalLM,
    modules: Mapping[str, nn.Module],
    *,
    adapter: str,
    index: int,
    weight_name: str,
    halves: tuple[Tensor, Tensor],
    shard: tuple[int, int, int],
) -> tuple[str, _Pair]:
    """The module a checkpoint projection's (A, B) adapts, and the pair as this rank holds
    it (``shard``: rank, num_shard, the model's KV heads): a column-parallel projection's B
    split by rows (k/v by KV head, replicated as their base weights) and a row-parallel
    one's A by columns, as the base weight of each.

    Raises:
        ValueError: no such projection, or shapes that do not fit it.
    """
    projection = weight_name.removesuffix(".weight")
    target, part = model.checkpoint_target(weight_name)
    module_name = target.removesuffix(".weight")
    module = modules.get(module_name)
    if module is None or not hasattr(module, "out_features"):
        raise ValueError(
            f"LoRA adapter {adapter!r} adapts {projection}, which is not a projection of "
            f"this {type(model).__name__}"
        )
    a, b = halves
    rank, num_shard, num_kv_heads = shard
    if num_shard > 1:
        layout = type(model).tp_layout
        column = any(p in weight_name for p in layout.column)
        row = any(p in weight_name for p in layout.row)
        if column or row:
            ((_, sliced),) = shard_weights(
                [(weight_name, b if column else a)],
                rank=rank,
                num_shard=num_shard,
                num_kv_heads=num_kv_heads,
                layout=layout,
            )
            a, b = (a, sliced) if column else (sliced, b)
    linear: Any = module  # Linear or QuantizedLinear: both have the features counts
    rows = model.part_rows(target, part) or (0, int(linear.out_features))
    in_features = int(linear.in_features)
    if (b.shape[0], a.shape[1]) != (rows[1], in_features):
        raise ValueError(
            f"LoRA adapter {adapter!r}: {projection} maps {a.shape[1]} -> {b.shape[0]} "
            f"features, the model's {in_features} -> {rows[1]}"
        )
    return module_name, _Pair(index, rows, a, b)


def _stack(
    manager: LoraAdapters, pairs: list[_Pair], out_features: int, device: torch.device
) -> _Projection:
    total = sum(pair.a.shape[0] for pair in pairs)
    in_features = pairs[0].a.shape[1]
    a = torch.zeros(total, in_features, dtype=pairs[0].a.dtype)
    b = torch.zeros(out_features, total, dtype=pairs[0].b.dtype)
    columns = torch.zeros(total, dtype=torch.long)
    start = 0
    for pair in pairs:
        rank = pair.a.shape[0]
        first, count = pair.rows
        a[start : start + rank] = pair.a
        b[first : first + count, start : start + rank] = pair.b
        columns[start : start + rank] = pair.adapter
        start += rank
    return _Projection(manager, a.to(device), b.to(device), columns.to(device))
