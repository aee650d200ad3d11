"""What tgi-scheduler needs of tgi-core loads no library of tgi-core's ``frontend`` extra, at
run time (this test) and in the import graph (lint-imports, which must catch an offender)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))
FRONTEND = {"tokenizers", "jinja2", "gguf", "numpy", "huggingface_hub", "jsonschema"}
FRONTEND |= {"outlines_core", "tgi_core.validation", "tgi_core.tokenization"}

LOADED = """
import sys
import tgi_core, tgi_core.contract, tgi_core.errors, tgi_core.settings, tgi_core.api
import tgi_scheduler, tgi_scheduler.testing
print(" ".join(sorted(sys.modules)))
"""


def test_light_modules_load_no_frontend_library() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOADED], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(done.stdout.split())
    assert "tgi_scheduler.engine" in loaded
    assert not loaded & FRONTEND, loaded & FRONTEND


def test_lint_imports_catches_settings_importing_validation(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "packages", copy / "packages", ignore=shutil.ignore_patterns("tests"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    offender = copy / "packages/tgi-core/src/tgi_core/settings/slices.py"
    offender.write_text(offender.read_text() + "\nimport tgi_core.validation  # noqa\n")
    src_dirs = [str(p) for p in sorted((copy / "packages").glob("*/src"))]
    done = subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--config", str(copy / "pyproject.toml")],
        cwd=copy,
        env={"PYTHONPATH": ":".join(src_dirs), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "need msgspec only (no frontend" in done.stdout.replace("\n", " ")
    assert "tgi_core.settings.slices -> tgi_core.validation" in done.stdout
