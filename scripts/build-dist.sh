#!/usr/bin/env bash
# Builds an sdist and a wheel of each of the five packages into dist/ (or the folder given),
# so that one package installs as a user types it:
#   pip install --find-links dist tgi-scheduler
# Needs the `build` frontend (pip install build); extra arguments go to `python -m build`
# (e.g. --no-isolation when hatchling is already installed).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${DIST_DIR:-$root/dist}")"
python="${PYTHON:-python3}"
"$python" -m build --version >/dev/null 2>&1 || {
  echo "error: $python has no 'build' module; run: $python -m pip install build" >&2
  exit 1
}
mkdir -p "$out"
for package in "$root"/packages/*/; do
  "$python" -m build --outdir "$out" "$@" "$package"
done
ls -1 "$out"
