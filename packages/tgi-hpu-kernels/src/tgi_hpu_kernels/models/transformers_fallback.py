"""Any causal LM transformers implements, served through our paged attention: the fallback.

A checkpoint whose architecture has no native implementation here (``registry.py``) runs
transformers' own modelling code, with every attention call routed to our
``PagedAttention`` (the approach of vLLM's Transformers backend). A step's packed token rows
go in as one batch row of ``N`` tokens with their true positions; transformers applies its
embeddings, positional encoding, norms and MLPs, and at each layer calls the attention
function registered here, which writes the layer's K/V into the paged cache and attends
with the step's ``AttentionMetadata``. Scheduling, buckets, the prefix cache, sampling and
grammars work as for a native family; transformers allocates no cache of its own.

A model whose attention does not go through transformers' attention interface
(``_supports_attention_backend``: ALiBi or custom-masked models), and every model on Gaudi,
where optimum-habana's Gaudi classes keep their own attention, is recomputed every step
instead (``transformers_recompute.py``).

What it needs and refuses (one line each, at load): logits are the output embedding's (a
head that rescales or soft-caps them is refused); one rank, dense weights, a safetensors
folder; remote modelling code (``auto_map``) only with ``--trust-remote-code``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tgi_hpu_kernels.attention import AttentionBackend, AttentionMetadata, PagedAttention
from tgi_hpu_kernels.kv_cache import KVCache
from tgi_hpu_kernels.layers.rotary import RopeConfig
from tgi_hpu_kernels.models.config import ModelConfig
from tgi_hpu_kernels.models.transformers_recompute import (
    HistoryInputs,
    RecomputingCausalLM,
    TransformersModel,
)

__all__ = [
    "TransformersCausalLM",
    "fallback_config",
    "is_served_by_transformers",
    "load_transformers_model",
]

_ATTENTION = "tgi_paged"
# config keys of heads that change the logits after the output embedding
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "dim_model_base")
# the step being run, for the attention function transformers calls (one step at a time)
_STEP: ContextVar[tuple[TransformersCausalLM, AttentionMetadata, KVCache]] = ContextVar(
    "tgi_transformers_step"
)


def _paged_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    *,
    scaling: float | None = None,
    **_: Any,
) -> tuple[Tensor, None]:
    """transformers' attention interface: ``[1, heads, N, d]`` q/k/v -> ``[1, N, heads, d]``."""
    model, attn, kv = _STEP.get()
    layer = model.attention_layer(module)
    if scaling is not None:
        layer.scale = scaling
    n = query.shape[2]
    rows = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
    out = layer(*rows, attn, kv)  # [N, heads * d]
    return out.view(1, n, layer.num_heads, layer.head_dim), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(_ATTENTION, _paged_attention)


def _transformers_knows(model_type: str | None) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def is_served_by_transformers(raw: Mapping[str, Any], *, trust_remote_code: bool) -> bool:
    """Whether a config without a native family can be served by transformers.

    Raises:
        ValueError: the model needs its own code and ``trust_remote_code`` is off.
    """
    if "AutoModelForCausalLM" in (raw.get("auto_map") or {}):
        if not trust_remote_code:
            raise ValueError(
                f"model type {raw.get('model_type')!r} needs the checkpoint's own modelling "
                "code: pass --trust-remote-code (and --revision) to run it"
            )
        return True
    return _transformers_knows(raw.get("model_type"))


def fallback_config(hf_config: Any) -> ModelConfig:
    """The shape numbers the runner needs (KV cache, buckets, sampling) from a transformers
    config; transformers' ``attribute_map`` gives every family the standard names (a VLM's
    are its text model's)."""
    model_type = str(hf_config.model_type)
    hf_config = hf_config.get_text_config()
    heads = int(hf_config.num_attention_heads)
    hidden = int(hf_config.hidden_size)
    layer_types = getattr(hf_config, "layer_types", None)
    window = getattr(hf_config, "sliding_window", None)
    windows: tuple[int | None, ...] = ()
    if layer_types is not None and window is not None:
        windows = tuple(int(window) if t == "sliding_attention" else None for t in layer_types)
    elif window is not None and getattr(hf_config, "use_sliding_window", True):
        windows = (int(window),) * int(hf_config.num_hidden_layers)
    eos = getattr(hf_config, "eos_token_id", None)
    return ModelConfig(
        model_type=model_type,
        vocab_size=int(hf_config.vocab_size),
        hidden_size=hidden,
        intermediate_size=int(getattr(hf_config, "intermediate_size", None) or 4 * hidden),
        num_hidden_layers=int(hf_config.num_hidden_layers),
        num_attention_heads=heads,
        num_key_value_heads=int(getattr(hf_config, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(hf_config, "head_dim", None) or hidden // heads),
        rms_norm_eps=0.0,  # transformers' own norms run
        max_position_embeddings=int(getattr(hf_config, "max_position_embeddings", 0) or 0),
        rope=RopeConfig(),  # transformers' own positional encoding runs
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        sliding_windows=windows,
        eos_token_ids=() if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),),
    )


def load_transformers_model(
    folder: Path,
    *,
    dtype: torch.dtype,
    device: torch.device,
    backend: AttentionBackend,
    trust_remote_code: bool,
    history_inputs: HistoryInputs | None = None,
) -> TransformersCausalLM | RecomputingCausalLM:
    """Loads ``folder`` with transformers: through the paged cache where its attention goes
    through transformers' attention interface, else recomputed every step
    (``transformers_recompute.py``); on Gaudi always recomputed, with optimum-habana's
    Gaudi model classes (TGI-Gaudi's way: ``adapt_transformers_to_gaudi`` before loading).
    With ``history_inputs`` (a VLM family's) the image-text model loads, recomputed with its
    images.

    Raises:
        ValueError: a model whose logits are transformed after the output embedding.
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    on_gaudi = device.type == "hpu"
    if on_gaudi:
        from optimum.habana.transformers.modeling_utils import adapt_transformers_to_gaudi

        adapt_transformers_to_gaudi()
    else:
        _register_attention()
    auto = AutoModelForCausalLM if history_inputs is None else AutoModelForImageTextToText
    hf_model: Any = auto.from_pretrained(
        folder,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
    )
    text_config = hf_model.config.get_text_config()
    transforms = [k for k in _LOGIT_TRANSFORMS if getattr(text_config, k, None)]
    if transforms:
        raise ValueError(
            f"{type(hf_model).__name__} transforms its logits after the output embedding "
            f"({', '.join(transforms)}); it is not supported through transformers"
        )
    config = fallback_config(hf_model.config)
    hf_model = hf_model.to(device).eval()
    if on_gaudi or history_inputs is not None:
        return RecomputingCausalLM(hf_model, config, history_inputs)
    if getattr(hf_model, "_supports_attention_backend", False):
        hf_model.set_attn_implementation(_ATTENTION)
        return TransformersCausalLM(hf_model, config, backend)
    return RecomputingCausalLM(hf_model, config)


class TransformersCausalLM(TransformersModel):
    """A transformers causal LM behind the interface the runner calls on native families:
    ``forward`` -> final hidden states, ``compute_logits`` -> float32 logits."""

    def __init__(self, hf_model: Any, config: ModelConfig, backend: AttentionBackend) -> None:
        super().__init__(hf_model, config)
        self.attention = nn.ModuleList(
            PagedAttention(
                layer_idx=i,
                num_heads=config.num_attention_heads,
                num_kv_heads=config.num_key_value_heads,
                head_dim=config.head_dim,
                sliding_window=config.sliding_window(i),
                backend=backend,
            )
            for i in range(config.num_hidden_layers)
        )

    def attention_layer(self, module: nn.Module) -> PagedAttention:
        """Our paged attention for transformers' attention ``module`` (its ``layer_idx``)."""
        index = getattr(module, "layer_idx", None)
        if index is None:
            raise ValueError(f"{type(module).__name__} has no layer_idx: cannot page its KV")
        layer: PagedAttention = self.attention[index]
        return layer

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor,
        attn: AttentionMetadata,
        kv: KVCache,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """``input_ids``/``positions`` ``[N]`` -> final hidden states ``[N, hidden]``."""
        if inputs_embeds is not None:
            raise ValueError("a model served through transformers takes no image embeddings")
        token = _STEP.set((self, attn, kv))
        try:
            out = self.hf_model.base_model(
                input_ids=input_ids[None], position_ids=positions[None], use_cache=False
            )
        finally:
            _STEP.reset(token)
        hidden: Tensor = out.last_hidden_state[0]
        return hidden
