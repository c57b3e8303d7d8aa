#!/usr/bin/env bash
# Create .venv (if missing) and install ScopeRT with the CPU runtime, training, export, dev and dist extras.
# torch is pinned by constraints.txt to the CPU build (any other spec would download GBs of CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[cpu,train,export,dev,dist,bioimageio,int8]"
