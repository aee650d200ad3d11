#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (CPU, Release) from the llama.cpp source vendored in the
# llama-cpp-python sdist, into the user's cache (outside the clone, so that every clone and
# every CI run on a machine shares one build). Idempotent: an existing working binary is
# kept. No network at run time: curl, OpenSSL and the web-UI download are off.
#
#   bash benchmarks/peers/build_llama_server.sh   # -> ~/.cache/tgi-gaudi/peers/bin/llama-server
#
# Environment: PEERS_CACHE (default: ${XDG_CACHE_HOME:-~/.cache}/tgi-gaudi/peers; compare.py
# reads the same), LLAMA_CPP_PYTHON_VERSION (default: newest sdist on PyPI), JOBS (default:
# 2), PYTHON (default: python3). The build runs under `nice -n 19`: the cores are shared.
set -euo pipefail

CACHE="${PEERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tgi-gaudi/peers}"
BIN="$CACHE/bin/llama-server"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-2}"

# The vendored copy has no git metadata (`--version` says "commit unknown"): the llama.cpp
# commit is the one llama-cpp-python's changelog names for its release, kept beside the binary
# for compare.py's reports.
note_source() {
  local sdist="$1" name
  name="$(basename "$sdist" .tar.gz)"
  local commit
  commit="$(tar -xzOf "$sdist" "$name/CHANGELOG.md" | grep -m1 -o 'llama\.cpp@[0-9a-f]*' || true)"
  echo "${name//_/-} vendoring ggml-org/${commit:-llama.cpp@unknown}" >"$BIN.source"
}

if [[ -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1; then
  LATEST="$(ls -t "$CACHE"/sdist/llama_cpp_python-*.tar.gz 2>/dev/null | head -n 1 || true)"
  if [[ ! -f "$BIN.source" && -n "$LATEST" ]]; then note_source "$LATEST"; fi
  echo "llama-server already built: $BIN"
  exit 0
fi

mkdir -p "$CACHE/sdist" "$CACHE/bin"
SPEC="llama-cpp-python${LLAMA_CPP_PYTHON_VERSION:+==$LLAMA_CPP_PYTHON_VERSION}"
PATTERN="llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION:-*}.tar.gz"
# shellcheck disable=SC2086  # PATTERN is a glob on purpose
if ! ls "$CACHE"/sdist/$PATTERN >/dev/null 2>&1; then
  "$PYTHON" -m pip download --no-binary :all: --no-deps "$SPEC" -d "$CACHE/sdist"
fi
# shellcheck disable=SC2086
SDIST="$(ls -t "$CACHE"/sdist/$PATTERN | head -n 1)"
NAME="$(basename "$SDIST" .tar.gz)"
SRC="$CACHE/$NAME/vendor/llama.cpp"
if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
  tar -xzf "$SDIST" -C "$CACHE" "$NAME/vendor/llama.cpp"
fi

BUILD="$CACHE/build-$NAME"
GENERATOR=()
if command -v ninja >/dev/null 2>&1; then GENERATOR=(-G Ninja); fi
# Static libraries make one self-contained binary; LLAMA_CURL is deprecated in recent
# llama.cpp (ignored with a warning) but still honoured by older vendored copies.
nice -n 19 cmake -S "$SRC" -B "$BUILD" "${GENERATOR[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON \
  -DGGML_NATIVE=ON
nice -n 19 cmake --build "$BUILD" --config Release --target llama-server -j "$JOBS"

cp "$BUILD/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
note_source "$SDIST"
"$BIN" --version
echo "built: $BIN"
