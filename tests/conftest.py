"""Shared fixtures: where the real data lives, and the GPU marker's clean skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCOPERT_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.exists():
        pytest.fail(f"real test data not found at {DATA}; put ../shared beside the checkout or set SCOPERT_SHARED")
    return DATA


def _gpu_available() -> bool:
    try:
        import tensorrt  # noqa: F401
        from cuda.bindings import runtime as cudart

        err, count = cudart.cudaGetDeviceCount()
        return int(err) == 0 and count > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with TensorRT and cuda-python")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
