#!/usr/bin/env bash
# Set up, then run the whole test suite (slow real-data training tests included; GPU tests skip cleanly).
# With no arguments: every test that does not train against a clock runs on both cores (pytest-xdist, one file per
# worker); then the `clock` tests (real-data trainings with a time limit, which assert the quality reached) run
# one at a time on the whole machine they were sized on.
# Quick local loop: .venv/bin/python -m pytest -m "not slow" -n auto
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
parallel=0
.venv/bin/python -m pytest -m "not clock" -n auto --dist loadfile --durations=15 || parallel=$?
alone=0
.venv/bin/python -m pytest -m clock --durations=10 || alone=$?
echo "tests on both cores: exit $parallel; clock tests alone: exit $alone"
[ "$parallel" -eq 0 ] && [ "$alone" -eq 0 ]
