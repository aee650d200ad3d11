"""The front end imports ``tgi_vlm``, ``tgi_vlm.llava_next``, ``tgi_vlm.registry`` and
``tgi_vlm.prompt_encoding`` for
validation and token accounting: none may import torch; the torch parts load on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

_CHECK = """
import sys
import tgi_vlm, tgi_vlm.llava_next, tgi_vlm.registry, tgi_vlm.prompt_encoding
from tgi_vlm.llava_next import LlavaNextConfig, num_image_tokens, tokenizer_query
assert "torch" not in sys.modules, "torch was imported"
tgi_vlm.llava_next.preprocess  # a lazy attribute: imports the torch part
assert "torch" in sys.modules
"""


def test_torch_free_import() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_unknown_attribute_is_an_attribute_error() -> None:
    import tgi_vlm.llava_next

    with pytest.raises(AttributeError, match="no_such_name"):
        tgi_vlm.llava_next.no_such_name  # noqa: B018
