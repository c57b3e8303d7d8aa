#!/usr/bin/env bash
# Create .venv (if missing) and install ScopeRT with the CPU runtime, training, export, dev, dist, bioimage.io,
# INT8, microscope and napari extras.
# torch is pinned by constraints.txt to the CPU build (any other spec would download GBs of CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
# The napari tests need a virtual display (Xvfb) and Qt's xcb libraries; installed where we may (root with apt).
if ! command -v Xvfb >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-xkb1 \
    libxkbcommon-x11-0 libgl1 libegl1 libfontconfig1 libdbus-1-3 >/dev/null
fi
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[cpu,train,export,dev,dist,bioimageio,int8,microscope,napari]"
