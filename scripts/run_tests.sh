#!/usr/bin/env bash
# Set up, then run the whole test suite (slow real-data training tests included; GPU tests skip cleanly).
# Quick local loop: .venv/bin/python -m pytest -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
