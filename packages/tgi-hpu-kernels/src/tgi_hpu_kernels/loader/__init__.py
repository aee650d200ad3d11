"""Loading a model: find the checkpoint, read its config, build the family, fill the weights.

``load_model`` is the entry point; the model is built on the meta device and materialised
once on the target device in the target dtype (bfloat16 by default, as on Gaudi; float32
for exact comparisons), so weights are never held twice. An architecture with no native
family here is loaded by transformers and served through our paged attention
(``models/transformers_fallback.py``). A multimodal checkpoint's text model is served when
the caller says where it sits (``nested_model``: a ``NestedTextModel``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from tgi_core.nested_model import NestedTextModel
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.layers.quantized import QuantizedKernels
from tgi_hpu_kernels.layers.rotary import RopeConfig, RotaryEmbedding
from tgi_hpu_kernels.loader.gguf_weights import gguf_config, iter_gguf_tensors, open_gguf
from tgi_hpu_kernels.loader.prequantized import (
    checkpoint_quantization,
    prequantized_plan,
    prequantized_weights,
)
from tgi_hpu_kernels.loader.quantize import (
    WEIGHT_ONLY,
    QuantizationPlan,
    apply_plan,
    fit_plan,
    gguf_plan,
    plan_quantization,
    repack_layers,
)
from tgi_hpu_kernels.loader.safetensors_weights import iter_safetensors, read_hf_config
from tgi_hpu_kernels.loader.source import (
    EMBEDDED_MODEL_FILE,
    ModelLoadError,
    ModelSource,
    embedded_model_path,
    resolve_source,
)
from tgi_hpu_kernels.models.config import ModelConfig
from tgi_hpu_kernels.models.llama import LlamaForCausalLM, ModelBackend
from tgi_hpu_kernels.models.registry import UnsupportedModelError, resolve_model_class
from tgi_hpu_kernels.models.transformers_fallback import (
    TransformersCausalLM,
    fallback_config,
    is_served_by_transformers,
    load_transformers_model,
)
from tgi_hpu_kernels.models.transformers_recompute import HistoryInputs, RecomputingCausalLM
from tgi_hpu_kernels.parallel.sharding import add_row_parallel_reduce, shard_config, shard_weights
from tgi_hpu_kernels.parallel.vocab import add_vocab_parallel

if TYPE_CHECKING:
    from tgi_hpu_kernels.parallel.group import TensorParallelGroup

__all__ = [
    "EMBEDDED_MODEL_FILE",
    "LoadedModel",
    "ModelLoadError",
    "ModelSource",
    "embedded_model_path",
    "load_model",
    "read_model_config",
    "resolve_source",
    "torch_dtype",
]

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run, with what was loaded and from where."""

    model: LlamaForCausalLM | TransformersCausalLM | RecomputingCausalLM
    config: ModelConfig
    source: ModelSource
    dtype: torch.dtype
    # the checkpoint's config as read (a family converts adapter tensors with it too)
    raw_config: Mapping[str, Any]
    quantization: QuantizationPlan | None = None  # None: dense weights


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` | ``"float32"`` | ``"float16"`` -> the torch dtype."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not supported; use one of {sorted(_DTYPES)}") from None


def _raw_config(source: ModelSource, nested_model: NestedTextModel | None = None) -> dict[str, Any]:
    if source.kind == "gguf":
        return gguf_config(open_gguf(source.path))
    raw = read_hf_config(source.path)
    return raw if nested_model is None else nested_model.config(raw)


def _rope_override(config: ModelConfig, settings: RunnerSettings) -> ModelConfig:
    # --rope-scaling / --rope-factor (ROPE_SCALING / ROPE_FACTOR) replace the config's scaling.
    if settings.rope_scaling is None:
        return config
    rope = RopeConfig(
        rope_type=settings.rope_scaling,
        theta=config.rope.theta,
        factor=settings.rope_factor if settings.rope_factor is not None else 1.0,
        original_max_position_embeddings=config.max_position_embeddings,
        partial_rotary_factor=config.rope.partial_rotary_factor,  # the model's, not scaling
    )
    return config.with_rope(rope)


def _native_class(
    raw: dict[str, Any], source: ModelSource, settings: RunnerSettings
) -> type[LlamaForCausalLM] | None:
    """The native family that serves ``raw``, or None where transformers serves it.

    Raises:
        UnsupportedModelError: neither does.
        ValueError: transformers would serve it, but not with these settings.
    """
    try:
        return resolve_model_class(raw)
    except UnsupportedModelError as err:
        if not is_served_by_transformers(raw, trust_remote_code=settings.trust_remote_code):
            raise UnsupportedModelError(f"{err}; transformers has no causal LM for it") from None
        name = raw.get("model_type")
        refusal = (
            "a GGUF file (give its safetensors folder)"
            if source.kind == "gguf"
            else f"--num-shard {settings.num_shard}"
            if settings.num_shard > 1
            else f"--quantize {settings.quantize}"
            if settings.quantize
            else "QUANT_CONFIG"
            if settings.quant_config
            else f"--rope-scaling {settings.rope_scaling}"
            if settings.rope_scaling
            else None
        )
        if refusal is not None:
            raise ValueError(
                f"model type {name!r} has no native implementation and is served through "
                f"transformers, which does not support {refusal}"
            ) from None
        return None


def read_model_config(
    settings: RunnerSettings, nested_model: NestedTextModel | None = None
) -> tuple[ModelSource, ModelConfig]:
    """Resolves the checkpoint and parses its config (``nested_model``'s, in a multimodal
    checkpoint), without reading weights."""
    source = resolve_source(settings)
    raw = _raw_config(source, nested_model)
    cls = _native_class(raw, source, settings)
    if cls is None:
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(
            source.path, trust_remote_code=settings.trust_remote_code
        )
        return source, fallback_config(hf_config)
    return source, _rope_override(cls.parse_config(raw), settings)


def _check_gguf_weights(
    settings: RunnerSettings, source: ModelSource, types: Mapping[str, str] | None
) -> None:
    """Refuses ``--gguf-weights dense|quantized`` where there is nothing to choose: a
    checkpoint that is not a GGUF, or a GGUF whose projections and head are all dense."""
    choice = settings.gguf_weights
    if choice == "auto":
        return
    if source.kind != "gguf" or types is None:
        raise ValueError(f"--gguf-weights {choice}: {source.path} is not a GGUF checkpoint")
    if gguf_plan(types) is None:
        raise ValueError(
            f"--gguf-weights {choice}: {source.path.name} holds no quantized projections or head"
        )


def _quantization_plan(
    settings: RunnerSettings,
    prequantized: Mapping[str, Any] | None,
    gguf_types: Mapping[str, str] | None,
    gguf_quantized: bool,
    kernels: QuantizedKernels | None,
) -> QuantizationPlan | None:
    """What ``load_model`` quantizes (its arguments of the same names say how)."""
    plan: QuantizationPlan | None
    if prequantized is not None:
        plan = prequantized_plan(prequantized)  # the checkpoint's own 4-bit codes
    else:
        weight_only = settings.quantize if settings.quantize in WEIGHT_ONLY else None
        choice = settings.gguf_weights
        keep_gguf = settings.quantize is None and (  # not under fp8 either
            choice == "quantized" or (choice == "auto" and gguf_quantized)
        )
        plan = plan_quantization(weight_only, gguf_types if keep_gguf else None)
    return plan if plan is None or kernels is None else fit_plan(plan, kernels)


def load_model(
    settings: RunnerSettings,
    *,
    backend: ModelBackend,
    device: torch.device,
    group: TensorParallelGroup | None = None,
    gguf_quantized: bool = True,
    quantized_kernels: QuantizedKernels | None = None,
    nested_model: NestedTextModel | None = None,
    history_inputs: HistoryInputs | None = None,
) -> LoadedModel:
    """Builds and fills the model ``settings.model_id`` names.

    Args:
        settings: model id, revision, dtype, hub token/cache, rope overrides,
            ``max_total_tokens`` (the rotary tables cover at least that many positions) and
            ``quantize`` (weight-only methods; a GGUF keeps its stored precision without it:
            ``quantize.py``; a GPTQ or AWQ checkpoint its own: ``prequantized.py``).
        backend: the device's attention and elementwise kernels.
        device: where the weights live.
        group: this rank's tensor-parallel group: the model is built with its share of the
            heads, MLP and vocabulary rows and loads its weight slices (``LoadedModel.config``
            is that share but for ``vocab_size``, the full width of the gathered logits).
        gguf_quantized: the device's choice for a quantized GGUF, quantized layers (else
            dequantized), which ``settings.gguf_weights`` overrides unless it is auto.
        quantized_kernels: what the device's weight-only kernels take (``fit_plan``; None:
            any width, read from the codes).
        nested_model: the checkpoint is multimodal: serve the text model it describes.
        history_inputs: the checkpoint is multimodal and transformers serves it whole, with
            its images (``models/transformers_recompute.py``).

    Raises:
        ModelLoadError: the checkpoint cannot be found or read.
        UnsupportedModelError: its architecture is not implemented.
        ValueError: a bad dtype, an unsupported rope type, or weights that do not match.
    """
    dtype = torch_dtype(settings.dtype)
    source = resolve_source(settings)
    raw = _raw_config(source, nested_model)
    cls = _native_class(raw, source, settings)
    if cls is None:
        served = load_transformers_model(
            source.path,
            dtype=dtype,
            device=device,
            backend=backend,
            trust_remote_code=settings.trust_remote_code,
            history_inputs=history_inputs,
        )
        return LoadedModel(
            model=served, config=served.config, source=source, dtype=dtype, raw_config=raw
        )
    config = _rope_override(cls.parse_config(raw), settings)
    num_kv_heads = config.num_key_value_heads  # the whole model's, for shard_weights
    vocab_size = config.vocab_size  # the logits' width, gathered from the ranks' blocks
    if group is not None:
        config = shard_config(config, group.num_shard)
    rotary = RotaryEmbedding(
        config.rope,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        max_positions=max(config.max_position_embeddings, settings.max_total_tokens + 1),
        dtype=dtype,
        device=device,
    )
    with torch.device("meta"):
        model = cls(config, backend=backend, rotary=rotary).to(dtype)
    reader = open_gguf(source.path) if source.kind == "gguf" else None
    full_config = read_hf_config(source.path) if reader is None else {}
    num_shard = 1 if group is None else group.num_shard
    prequantized = checkpoint_quantization(full_config, settings.quantize, num_shard)
    types = None if reader is None else {t.name: t.tensor_type.name for t in reader.tensors}
    _check_gguf_weights(settings, source, types)
    plan = _quantization_plan(settings, prequantized, types, gguf_quantized, quantized_kernels)
    if plan is not None:
        apply_plan(model, plan)  # before the hooks below, which attach to the layers
    if group is not None:
        add_row_parallel_reduce(model, group.all_reduce, cls.tp_layout)
        add_vocab_parallel(model, group, vocab_size)
        model.model.fuse_layers = False  # a fused stack would skip the all-reduces
    model = model.to_empty(device=device)
    model.tie_weights()
    weights: Iterable[tuple[str, torch.Tensor]]
    if reader is not None:
        weights = iter_gguf_tensors(reader, raw)  # HF names and values, as a safetensors file
    else:
        weights = iter_safetensors(source.path)
        if nested_model is not None:
            weights = nested_model.weights(weights)
    weights = cls.checkpoint_tensors(weights, raw)
    if group is not None:
        weights = shard_weights(
            weights,
            rank=group.rank,
            num_shard=group.num_shard,
            num_kv_heads=num_kv_heads,
            layout=cls.tp_layout,
        )
    if prequantized is not None:
        model.load_weights(prequantized_weights(prequantized, weights))
    else:
        model.load_weights(weights)
    repack_layers(model)
    model.eval()
    return LoadedModel(
        model=model,
        config=replace(config, vocab_size=vocab_size),
        source=source,
        dtype=dtype,
        quantization=plan,
        raw_config=raw,
    )
