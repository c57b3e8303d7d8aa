"""ONNX Runtime backend: CPU by default, CUDA and TensorRT execution providers when installed.

onnxruntime-gpu does not raise when a GPU provider fails to load: it logs and runs on the CPU. So after
the session is created we read back the providers it really uses, and a requested GPU that fell back
is an error (``device='cuda'``) or a warning (``device='auto'``). Imports onnxruntime lazily.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from scopert.errors import BackendError, InputError
from scopert.runtime.backends.base import BackendInfo

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendError(
            "ONNX Runtime is not installed. Install it with `pip install 'scopert[cpu]'` (CPU) or "
            "`pip install 'scopert[gpu]'` (NVIDIA GPU); not both, they share one module name."
        ) from None
    return ort


def _providers(ort, device: str, engine_cache: Path) -> list:
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    wanted = []
    if "TensorrtExecutionProvider" in available:
        wanted.append(("TensorrtExecutionProvider", {
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(engine_cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(engine_cache),
        }))
    if "CUDAExecutionProvider" in available:
        wanted.append("CUDAExecutionProvider")
    if device == "cuda" and not wanted:
        raise BackendError(
            "--device cuda was asked for, but this ONNX Runtime has no GPU provider "
            f"(available: {', '.join(available)}). Install onnxruntime-gpu (`pip install 'scopert[gpu]'`) "
            "or use --device cpu."
        )
    return wanted + ["CPUExecutionProvider"]


class OrtBackend:
    """One InferenceSession; ``run`` releases the GIL, so the pipeline's other threads keep working."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        ort = _import_ort()
        path = Path(path)
        if not path.exists():
            raise InputError(f"model file {path} does not exist.")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        engine_cache = path.parent
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                providers=_providers(ort, device, engine_cache))
        except BackendError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise InputError(
                f"{path} is not a valid ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
                "Pass an ONNX file written by `scopert export`."
            ) from None
        used = self.session.get_providers()
        requested_gpu = device in ("auto", "cuda") and any(p in GPU_PROVIDERS for p in ort.get_available_providers())
        on_gpu = any(p in GPU_PROVIDERS for p in used)
        if device == "cuda" and not on_gpu:
            raise BackendError(
                f"--device cuda was asked for, but ONNX Runtime fell back to {used} (the CUDA provider failed to "
                "load: check the CUDA/cuDNN libraries that onnxruntime-gpu needs), or use --device cpu."
            )
        if requested_gpu and not on_gpu:
            log.warning("ONNX Runtime GPU providers failed to load; running on the CPU (%s)", used)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._cuda = "CUDAExecutionProvider" in used
        self.info = BackendInfo(
            name="ort", device="cuda" if on_gpu else "cpu", precision="fp32", providers=used,
            reason=f"ONNX Runtime {ort.__version__} with {used[0]}",
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self._cuda:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, batch)
            binding.bind_output(self.output_name, "cuda")
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run([self.output_name], {self.input_name: batch})[0]
