"""The image's entrypoint (``docker/entrypoint.sh``), run for real with bash.

The unit under test is the script's handling of its arguments, so a recording
``text-generation-launcher`` first on PATH stands in for the launcher it execs: it writes
the argv it got and ``PT_HPU_ENABLE_LAZY_COLLECTIVES``. Every spelling of sharding reaches
the launcher unchanged, and the launcher's own settings parser (what
``text-generation-launcher`` runs first) accepts it with the shard count that decided the
variable.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tgi_core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"

RECORDER = """#!/bin/sh
for arg in "$@"; do printf '%s\\n' "$arg"; done > "$RECORD_DIR/argv"
printf '%s' "${PT_HPU_ENABLE_LAZY_COLLECTIVES-unset}" > "$RECORD_DIR/lazy"
"""

# (argv, environment, shards): each spelling the launcher reads, and its shard count.
SPELLINGS = [
    (["--sharded=true", "--num-shard=2"], {}, 2),
    (["--sharded", "true", "--num-shard", "2"], {}, 2),
    (["--num-shard", "4"], {}, 4),
    (["--num-shard=4"], {}, 4),
    ([], {"NUM_SHARD": "2"}, 2),
    ([], {"SHARDED": "true", "NUM_SHARD": "8"}, 8),
    (["--sharded", "true"], {"HABANA_VISIBLE_DEVICES": "0,1,2,3"}, 4),
    (["--model-id", "my/model", "--num-shard", "1"], {}, 1),
    (["--sharded=false"], {}, 1),
    ([], {}, 1),
]


def run_entrypoint(
    tmp_path: Path, argv: list[str], environ: dict[str, str]
) -> tuple[list[str], str]:
    """The argv and ``PT_HPU_ENABLE_LAZY_COLLECTIVES`` the launcher got ("unset" if none)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "text-generation-launcher"
    launcher.write_text(RECORDER)
    python3 = bin_dir / "python3"  # this interpreter, which has tgi_core, as in the image
    python3.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    for script in (launcher, python3):
        script.chmod(0o755)
    base = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "RECORD_DIR": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(ENTRYPOINT), *argv],
        env={**base, **environ},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    recorded = (tmp_path / "argv").read_text().splitlines()
    return recorded, (tmp_path / "lazy").read_text()


@pytest.mark.parametrize(
    ("argv", "environ", "shards"),
    SPELLINGS,
    ids=[
        " ".join([*(f"{k}={v}" for k, v in env.items()), *argv]) or "none"
        for argv, env, _ in SPELLINGS
    ],
)
def test_every_sharding_spelling_reaches_the_launcher_unchanged(
    tmp_path: Path, argv: list[str], environ: dict[str, str], shards: int
) -> None:
    recorded, lazy = run_entrypoint(tmp_path, argv, environ)
    assert recorded == argv
    assert lazy == ("1" if shards > 1 else "unset")
    assert Settings.from_sources(recorded, environ).num_shard == shards


def test_a_lazy_collectives_choice_of_the_user_is_kept(tmp_path: Path) -> None:
    environ = {"PT_HPU_ENABLE_LAZY_COLLECTIVES": "0"}
    assert run_entrypoint(tmp_path, ["--num-shard", "2"], environ)[1] == "0"


def test_arguments_the_launcher_refuses_still_reach_it_to_be_reported(tmp_path: Path) -> None:
    argv = ["--sharded", "true", "--num-shard", "1", "--no-such-flag"]
    assert run_entrypoint(tmp_path, argv, {}) == (argv, "unset")


def test_the_kernel_cache_folder_in_the_volume_is_made(tmp_path: Path) -> None:
    cache = tmp_path / "data" / "tmp"
    run_entrypoint(tmp_path, [], {"TMPDIR": str(cache)})
    assert cache.is_dir()
