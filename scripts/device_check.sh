#!/usr/bin/env bash
# Issue 15's GPU check in one command (see scripts/device_check.py for the steps).
#   bash scripts/device_check.sh            on a GPU machine (torch+CUDA, cupy, cuda-python, ONNX Runtime CPU;
#                                          TensorRT optional); writes benchmarks/results/gpu_<device>.md
#   bash scripts/device_check.sh --dry-run  on any CPU machine: every step that needs no GPU, the rest
#                                          reported "skipped: no GPU"
# Exits non-zero when any step fails. PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import numpy" 2>/dev/null; then PYTHON=.venv/bin/python
  else PYTHON=python3; fi
fi
exec timeout "${DEVICE_CHECK_TIMEOUT:-470}" "$PYTHON" scripts/device_check.py "$@"
