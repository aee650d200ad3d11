#!/usr/bin/env bash
# The image's entrypoint: only what the launcher cannot do for itself, then the launcher with
# the arguments exactly as given (it reads every spelling of its flags and variables).
set -euo pipefail

# The compiled CPU kernels are cached under $TMPDIR (/data/tmp, in the volume); Python's
# tempfile silently falls back to /tmp when that folder is missing, so make it.
if [[ -n "${TMPDIR:-}" ]]; then mkdir -p "$TMPDIR"; fi

# As TGI-Gaudi's entrypoint: shards on HPU graphs need lazy collectives, set before the shard
# processes import habana_frameworks. The launcher's own settings give the shard count from
# any spelling (--sharded=true, --num-shard N, NUM_SHARD, ...); on an error the launcher
# itself reports it below.
shards="$(python3 - "$@" 2>/dev/null <<'PY' || echo 1
import os
import sys

from tgi_core.settings import Settings

print(Settings.from_sources(sys.argv[1:], os.environ).num_shard)
PY
)"
if ((shards > 1)); then export PT_HPU_ENABLE_LAZY_COLLECTIVES="${PT_HPU_ENABLE_LAZY_COLLECTIVES:-1}"; fi

exec text-generation-launcher "$@"
