"""Every package ships the same license, a changelog of its version, and bounds on its
siblings that admit their current versions and stop at the next contract version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))


def _project(folder: Path) -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    return project


def _version(folder: Path) -> Version:
    (about,) = folder.glob("src/*/__about__.py")
    match = re.search(r'__version__ = "([^"]+)"', about.read_text())
    assert match is not None
    return Version(match.group(1))


VERSIONS = {str(_project(folder)["name"]): _version(folder) for folder in PACKAGES}


@pytest.mark.parametrize("folder", PACKAGES, ids=lambda folder: folder.name)
def test_license_changelog_and_sibling_bounds(folder: Path) -> None:
    project = _project(folder)
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (folder / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    assert f"## {_version(folder)} " in (folder / "CHANGELOG.md").read_text()
    assert project["urls"] and project["classifiers"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    for requirement in requirements:
        if requirement.name not in VERSIONS:
            continue
        current = VERSIONS[requirement.name]
        next_minor = Version(f"{current.major}.{current.minor + 1}")
        assert current in requirement.specifier, requirement
        assert next_minor not in requirement.specifier, f"{requirement}: no upper bound"
        if requirement.name == "tgi-core" and folder.name != "tgi-scheduler":
            assert requirement.extras == {"frontend"}, requirement


def test_the_scheduler_needs_no_frontend_extra() -> None:
    core = _project(ROOT / "packages/tgi-core")
    assert core["dependencies"] == ["msgspec>=0.18"]
    (requirement,) = _project(ROOT / "packages/tgi-scheduler")["dependencies"]
    assert Requirement(requirement).extras == set()
