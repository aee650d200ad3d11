#!/usr/bin/env bash
# As TGI-Gaudi's entrypoint: tensor parallelism with HPU graphs needs lazy collectives.
set -euo pipefail
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == "--sharded" ]]; then
    j=$((i + 1))
    if [[ "${!j:-}" == "true" ]]; then export PT_HPU_ENABLE_LAZY_COLLECTIVES=1; fi
  fi
done
exec text-generation-launcher "$@"
