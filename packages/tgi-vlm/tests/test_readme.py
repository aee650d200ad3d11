"""The README's examples run as written (the vision one on the tiny checkpoint)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_FOLDER = 'Path("llava-v1.6-mistral-7b-hf")'


def _example(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert match is not None, f"README lost its {marker}"
    return match.group(1)


def test_inputs_example_runs() -> None:
    code = _example("inputs-example")
    exec(compile(code, str(README), "exec"), {"__name__": "readme_inputs"})


def test_vision_example_runs(
    tiny_checkpoint: Path, tiny_hf_image_processor: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_checkpoint, folder)
    tiny_hf_image_processor.save_pretrained(folder)
    code = _example("vision-example")
    assert HUB_FOLDER in code
    code = code.replace(HUB_FOLDER, f"Path({str(folder)!r})")
    exec(compile(code, str(README), "exec"), {"__name__": "readme_vision"})
