"""Shared fixtures: the embedded SmolLM2 tokenizer, loaded once per test module."""

from __future__ import annotations

import pytest

from tgi_core.testing import smollm2_gguf
from tgi_core.tokenization import Tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    return load_tokenizer(str(smollm2_gguf()))
