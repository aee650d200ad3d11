"""A causal LM inside a bigger checkpoint (a vision-language model's), described as data.

A multimodal checkpoint holds a text model next to other parts (a vision tower, a
projector). The runner serves the text model alone; ``NestedTextModel`` says where it sits:
the config key of its config and a weight-name prefix map onto a plain causal LM's names.
The caller supplies it (``tgi_vlm``'s registry knows each family's); the kernels name no
family. It lives in ``tgi_core`` because both sides read it: the front end's registry
holds these, the kernels' loader follows them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["NestedTextModel"]

T = TypeVar("T")  # a weight tensor (this package imports no torch)

# top-level keys a text config falls back to (transformers keeps them on the outer config)
_INHERITED_KEYS = ("tie_word_embeddings", "eos_token_id", "bos_token_id")


@dataclass(frozen=True)
class NestedTextModel:
    """Where a checkpoint's text model is.

    Attributes:
        config_key: the outer config's key holding the text model's config.
        default_model_type: the text config's ``model_type`` when it names none.
        weight_prefixes: checkpoint prefix -> causal LM prefix, first match wins; a tensor
            that matches none is not the text model's and is skipped.
    """

    config_key: str
    default_model_type: str
    weight_prefixes: tuple[tuple[str, str], ...]

    def config(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """``raw[config_key]`` as a causal LM config."""
        text = dict(raw.get(self.config_key) or {})
        text.setdefault("model_type", self.default_model_type)
        for key in _INHERITED_KEYS:
            if key not in text and key in raw:
                text[key] = raw[key]
        return text

    def weights(self, weights: Iterable[tuple[str, T]]) -> Iterator[tuple[str, T]]:
        """The text model's tensors of ``weights`` under causal LM names (the rest dropped)."""
        for name, tensor in weights:
            for prefix, target in self.weight_prefixes:
                if name.startswith(prefix):
                    yield target + name[len(prefix) :], tensor
                    break
