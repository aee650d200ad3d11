"""The language model inside a vision-language checkpoint (LLaVA-NeXT).

A ``llava_next`` checkpoint is a text model plus a vision tower and a projector. The runner
serves the text model: its config is ``text_config`` and its weights are the checkpoint's
``language_model`` tensors, renamed to a plain causal LM's names. Both key layouts are read:
the hub's and transformers 4's (``language_model.model.*``, ``language_model.lm_head.*``) and
transformers 5's (``model.language_model.*``, ``lm_head.*``). Vision tensors are skipped here;
``tgi_vlm`` loads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from torch import Tensor

__all__ = ["MULTIMODAL_MODEL_TYPES", "language_model_config", "language_model_weights"]

MULTIMODAL_MODEL_TYPES: frozenset[str] = frozenset({"llava_next"})

# checkpoint prefix -> causal LM prefix; anything else in a multimodal checkpoint is vision
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("model.language_model.", "model."),
    ("lm_head.", "lm_head."),
)


def language_model_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` itself for a text model; a multimodal config's ``text_config``, as a causal LM
    config (``model_type`` ``llama`` when absent, as transformers' LLaVA default)."""
    if raw.get("model_type") not in MULTIMODAL_MODEL_TYPES:
        return dict(raw)
    text = dict(raw.get("text_config") or {})
    text.setdefault("model_type", "llama")
    for key in ("tie_word_embeddings", "eos_token_id", "bos_token_id"):
        if key not in text and key in raw:
            text[key] = raw[key]
    return text


def language_model_weights(
    raw: Mapping[str, Any], weights: Iterable[tuple[str, Tensor]]
) -> Iterator[tuple[str, Tensor]]:
    """``weights`` unchanged for a text model; a multimodal checkpoint's language model
    tensors under causal LM names (vision tensors dropped)."""
    if raw.get("model_type") not in MULTIMODAL_MODEL_TYPES:
        yield from weights
        return
    for name, tensor in weights:
        for prefix, target in _PREFIXES:
            if name.startswith(prefix):
                yield target + name[len(prefix) :], tensor
                break
