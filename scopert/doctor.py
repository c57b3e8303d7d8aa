"""``scopert doctor``: what this machine offers ScopeRT (Python, numpy, backends, torch/onnx, GPU).

Reads package versions from metadata and never imports torch, so it is quick and safe on any machine.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name via nvidia-smi, or None when there is none."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = out.stdout.strip().splitlines()
    return line[0] if out.returncode == 0 and line else None


def environment_report() -> dict[str, str]:
    report = {"python": platform.python_version(), "platform": platform.platform(),
              "processor": platform.processor() or platform.machine()}
    for dist in ("numpy", "tifffile", "h5py", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt",
                 "cuda-python", "torch", "onnx", "dask", "zarr"):
        report[dist] = _version(dist) or "not installed"
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        report["ort providers"] = ", ".join(ort.get_available_providers())
    report["gpu"] = gpu_name() or "none visible"
    report.update(cuda_report())
    report.update(engine_report())
    report.update(backend_choice_report())
    report["default backend"] = report["auto backend"].split(":")[0]
    return report


def engine_report() -> dict[str, str]:
    """Every registered engine (the registry is the one list): installed or not, where it runs, its precisions."""
    from scopert.runtime.backends.base import REGISTRY

    out = {}
    for entry in REGISTRY.values():
        found = bool(entry.probe) and importlib.util.find_spec(entry.probe) is not None
        state = "installed" if found else f"not installed (`pip install 'scopert[{entry.install}]'`)"
        out[f"engine {entry.name}"] = (f"{entry.title}: {state}; runs {', '.join(entry.suffixes)} on "
                                      f"{', '.join(entry.devices)} in {', '.join(entry.precisions)}")
    return out


def cuda_report(cudart: Any = None) -> dict[str, str]:
    """What cuda-python's runtime sees: the GPUs, or why none (a driver older than cuda-python's CUDA major is
    named as a driver/runtime mismatch with its fix, not as 'no GPU'). Never raises."""
    from scopert.errors import BackendError
    from scopert.runtime.backends.cuda_adapter import CudaRuntime, import_cudart

    if cudart is None:
        if importlib.util.find_spec("cuda") is None:
            return {"cuda": "cuda-python not installed (the TensorRT backend needs it: scopert[gpu-cu12] or "
                            "scopert[gpu-cu13])"}
        try:
            cudart = import_cudart()
        except BackendError as exc:
            return {"cuda": str(exc)}
    try:
        probe = CudaRuntime(cudart).probe()
    except Exception as exc:  # noqa: BLE001 - a broken install is reported, not raised
        return {"cuda": f"cuda-python cannot query CUDA ({type(exc).__name__}: {exc})"}
    return {"cuda": probe.explain()}


def backend_choice_report() -> dict[str, str]:
    """What ``backend='auto'`` picks on this machine and why, and what bf16 would need (issue 7)."""
    from scopert.runtime.selection.choice import choose, probe_environment
    from scopert.runtime.cpu import cpu_caps

    out: dict[str, str] = {}
    try:
        choice = choose("model.onnx", "auto", probe_environment())
        out["auto backend"] = f"{choice.backend} on {choice.device}: {choice.reason}"
    except Exception as exc:  # noqa: BLE001 - doctor reports, it does not fail
        out["auto backend"] = f"none: {exc}"
    caps = cpu_caps()
    out["cpu"] = caps.model
    out["default precision"] = ("auto: bf16 where the CPU has it and the model's card records a passed bf16 gate "
                                "(>= 45 dB on real tiles, `scopert export --cpu-gates`), else f32; --precision f32 forces f32")
    out["bf16"] = (f"available: {caps.bf16_evidence}" if caps.bf16 else f"not available: {caps.bf16_evidence}")
    out.update(measured_choice_report())
    return out


def measured_choice_report(folder: str | Path = "engines") -> dict[str, str]:
    """What the measured CPU choice (issue 16) recorded in ``engines/cpu_choice.json`` of the working directory."""
    from scopert.runtime.selection.measured import CACHE_NAME, engine_versions, read_cache

    records = read_cache(Path(folder) / CACHE_NAME)
    out = {"cpu choice": f"auto times ONNX Runtime vs OpenVINO f32 per model on its planned tile, cached in "
                         f"engines/{CACHE_NAME} beside the model (engines now: {engine_versions()})"}
    for i, rec in enumerate(records.values()):
        timing = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in sorted(rec.get("seconds", {}).items()))
        out[f"measured {i + 1}"] = (f"{rec.get('backend')} for model {str(rec.get('where', ''))[:12]} tile "
                                    f"{rec.get('input_shape')}: {timing} ({rec.get('measured_at')})")
    return out
