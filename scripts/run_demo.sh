#!/usr/bin/env bash
# The main job on a fresh machine: set up, then data -> train -> export -> tiled inference -> report.
# Extra arguments go to `scopert demo` (e.g. --data ../shared/data/w2s_8bit_pairs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/scopert demo -o demo_out "$@"
