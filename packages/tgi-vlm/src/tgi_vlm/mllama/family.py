"""Mllama as a ``VlmFamily``: transformers serves the checkpoint, with its images."""

from __future__ import annotations

from tgi_vlm.family import VlmFamily

__all__ = ["MLLAMA"]

MLLAMA = VlmFamily(
    model_type="mllama",
    name="Mllama",
    prompt_encoder="tgi_vlm.mllama.prompt:MllamaPromptEncoder.from_folder",
    history_inputs="tgi_vlm.mllama.images:MllamaImages.for_runner",
)
