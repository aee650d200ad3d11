"""The layering contract holds, and the checker really catches a violation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    src_dirs = [str(p) for p in sorted((root / "packages").glob("*/src"))]
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": ":".join(src_dirs), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


def test_contract_holds_on_the_tree() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


def _lint_imports_with(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess[str]:
    """lint-imports on a copy of the tree where ``module`` (a path under packages/) starts
    with ``line``."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "packages", copy / "packages", ignore=shutil.ignore_patterns("tests"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    offender = copy / "packages" / module
    offender.write_text(f"{line}  # noqa\n" + offender.read_text())
    return _lint_imports(copy)


def test_contract_fails_when_core_imports_torch(tmp_path: Path) -> None:
    result = _lint_imports_with(tmp_path, "tgi-core/src/tgi_core/contract.py", "import torch")
    assert result.returncode != 0
    assert "tgi_core and tgi_scheduler import no torch" in result.stdout
    assert "BROKEN" in result.stdout


def test_contract_fails_when_the_server_imports_a_vlm_family(tmp_path: Path) -> None:
    result = _lint_imports_with(
        tmp_path, "tgi-server/src/tgi_server/asgi.py", "import tgi_vlm.llava_next.prompt"
    )
    assert result.returncode != 0
    assert "Only tgi_vlm reaches a VLM family" in result.stdout
    assert "BROKEN" in result.stdout


def test_contract_fails_when_habana_is_imported_outside_the_device_layer(tmp_path: Path) -> None:
    result = _lint_imports_with(
        tmp_path,
        "tgi-hpu-kernels/src/tgi_hpu_kernels/parallel/group.py",
        "import habana_frameworks.torch.distributed.hccl",
    )
    assert result.returncode != 0
    assert "Only tgi_hpu_kernels.device imports Habana frameworks BROKEN" in " ".join(
        result.stdout.split()
    )


def test_no_vlm_family_is_named_outside_tgi_vlm() -> None:
    """The kernels and the server take a family's parts through tgi_vlm's registry, by data."""
    from tgi_vlm.registry import FAMILIES

    vlm_src = ROOT / "packages/tgi-vlm/src/tgi_vlm"
    needles = {"llava"} | {p.parent.name for p in vlm_src.glob("*/family.py")}
    needles |= {f.model_type for f in FAMILIES.values()} | {f.name for f in FAMILIES.values()}
    offenders = [
        f"{path.relative_to(ROOT)}: {needle}"
        for path in sorted((ROOT / "packages").glob("*/src/**/*.py"))
        if not path.is_relative_to(vlm_src)
        for needle in sorted(needles)
        if needle.lower() in path.read_text().lower()
    ]
    assert needles > {"llava"}  # the families were found: the scan looks for them
    assert offenders == []


def test_only_the_server_ends_its_processes() -> None:
    """Libraries report a failure and leave the process alone: ``os._exit`` (a dead shard
    ending the engine, an orphaned shard leaving) is the server's process policy."""
    server_src = ROOT / "packages/tgi-server/src"
    sources = sorted((ROOT / "packages").glob("*/src/**/*.py"))
    offenders = [
        str(path.relative_to(ROOT))
        for path in sources
        if not path.is_relative_to(server_src) and "os._exit(" in path.read_text()
    ]
    assert any("os._exit(" in p.read_text() for p in sources if p.is_relative_to(server_src))
    assert offenders == []
