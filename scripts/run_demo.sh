#!/usr/bin/env bash
# The main job on a fresh machine: set up, then real data -> train -> export -> tiled inference -> report.
# It trains on the real W2S widefield pairs of ../shared/data unless --data names another folder of raw/gt pairs;
# without ../shared it falls back to `scopert demo`'s synthetic phantom spheres and says so.
# Extra arguments go to `scopert demo` (e.g. --minutes 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=("$@")
w2s="${SCOPERT_SHARED:-../shared}/data/w2s_8bit_pairs"
if [[ " $* " != *" --data "* && " $* " != *" --data="* ]]; then
    if [ -d "$w2s" ]; then
        args=(--data "$w2s" "${args[@]}")
    else
        echo "run_demo: $w2s not found; the demo uses synthetic phantom spheres (pass --data DIR for real pairs)" >&2
    fi
fi
exec .venv/bin/scopert demo -o demo_out "${args[@]}"
