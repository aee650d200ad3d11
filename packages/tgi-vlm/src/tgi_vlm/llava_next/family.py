"""LLaVA-NeXT as a ``VlmFamily``: its text model's place in the checkpoint and its hooks.

The text model is ``text_config`` (a Llama when it names no type, as transformers' default)
and the ``language_model`` tensors. Both key layouts are read: the hub's and transformers
4's (``language_model.model.*``, ``language_model.lm_head.*``) and transformers 5's
(``model.language_model.*``, ``lm_head.*``); the vision tensors are ``weights.py``'s.
"""

from __future__ import annotations

from tgi_core.nested_model import NestedTextModel
from tgi_vlm.family import VlmFamily

__all__ = ["LLAVA_NEXT"]

LLAVA_NEXT = VlmFamily(
    model_type="llava_next",
    name="LLaVA-NeXT",
    nested_model=NestedTextModel(
        config_key="text_config",
        default_model_type="llama",
        weight_prefixes=(
            ("language_model.model.", "model."),
            ("language_model.lm_head.", "lm_head."),
            ("model.language_model.", "model."),
            ("lm_head.", "lm_head."),
        ),
    ),
    prompt_encoder="tgi_vlm.llava_next.prompt:LlavaNextPromptEncoder.from_folder",
    prompt_embedder="tgi_vlm.llava_next.embedder:LlavaNextEmbedder.for_runner",
)
