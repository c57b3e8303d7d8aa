"""Defect 2 of issue 15: CUDA-12 and CUDA-13 extras, and doctor naming a driver/runtime mismatch."""

from __future__ import annotations

import tomllib
from pathlib import Path

from scopert.doctor import cuda_report
from tests.fakes.fake_cudart import FakeCudaRuntimeModule

REPO = Path(__file__).resolve().parents[1]


def _requirement(extras: dict, extra: str, dist: str) -> str:
    return next(r for r in extras[extra] if r.split(">")[0].split("<")[0].split("=")[0].strip() == dist)


def test_gpu_extras_pin_cuda_python_to_the_driver_major():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert _requirement(extras, "gpu-cu12", "cuda-python").endswith("<13")
    assert _requirement(extras, "gpu-cu12", "tensorrt-cu12")
    assert ">=13" in _requirement(extras, "gpu-cu13", "cuda-python")
    assert _requirement(extras, "gpu-cu13", "tensorrt-cu13")
    assert extras["gpu"] == ["scopert[gpu-cu12]"]  # the plain extra never pulls CUDA 13 onto a CUDA-12 driver


def test_doctor_names_a_driver_runtime_mismatch_not_a_missing_gpu():
    line = cuda_report(FakeCudaRuntimeModule(driver_version=12040, runtime_version=13000))["cuda"]
    assert "driver/runtime mismatch" in line and "CUDA 12.4" in line and "gpu-cu12" in line
    assert "no NVIDIA GPU" not in line
    assert "no NVIDIA GPU is visible" in cuda_report(FakeCudaRuntimeModule(devices=0))["cuda"]
    assert cuda_report(FakeCudaRuntimeModule(driver_version=13010, runtime_version=13000))["cuda"].startswith("1 GPU")
