#!/usr/bin/env bash
# Set up, then run the whole test suite (slow real-data training tests included; GPU tests skip cleanly).
# With no arguments: the fast tests run on both cores (pytest-xdist, one file per worker), then the slow
# real-data tests run one at a time, so the time-limited trainings keep the whole machine they were sized on.
# Quick local loop: .venv/bin/python -m pytest -m "not slow" -n auto
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
fast=0
.venv/bin/python -m pytest -m "not slow" -n auto --dist loadfile --durations=15 || fast=$?
slow=0
.venv/bin/python -m pytest -m slow --durations=15 || slow=$?
echo "fast tests: exit $fast; slow tests: exit $slow"
[ "$fast" -eq 0 ] && [ "$slow" -eq 0 ]
