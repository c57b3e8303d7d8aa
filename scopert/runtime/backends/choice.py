"""Which backend runs a model, and why: the ``auto`` order and the OpenVINO -> ONNX Runtime fallback.

``auto`` picks, in order: a TensorRT engine on a GPU (an ``.engine``/``.plan`` file, or one built beside
the ONNX file), ONNX Runtime with CUDA when a GPU and the CUDA provider are there, OpenVINO on an x86 CPU
when it is installed, and ONNX Runtime on the CPU otherwise. The decision is a pure function of a probed
``Environment`` (so tests can fake one) and carries its reason, which ``scopert doctor`` prints and every
run logs. Imports numpy-free standard library only; backends are imported when opened.
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from scopert.errors import BackendError

log = logging.getLogger(__name__)

X86 = ("x86_64", "amd64", "i686", "x86")
ENGINE_SUFFIXES = (".engine", ".plan")


@dataclass(frozen=True)
class Environment:
    """What the machine offers the runtime."""

    machine: str
    openvino: bool
    ort: bool
    ort_providers: tuple[str, ...] = ()
    tensorrt: bool = False
    gpu: str | None = None

    @property
    def x86(self) -> bool:
        return self.machine.lower() in X86


@dataclass(frozen=True)
class Choice:
    backend: str  # 'trt', 'ort' or 'openvino'
    device: str  # 'cuda' or 'cpu'
    reason: str
    engine_path: Path | None = None
    skipped: tuple[str, ...] = field(default_factory=tuple)


def _gpu_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def probe_environment() -> Environment:
    """Look (without importing heavy modules, except ORT's provider list) at what is installed."""
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    providers: tuple[str, ...] = ()
    if has_ort:
        import onnxruntime as ort

        providers = tuple(ort.get_available_providers())
    return Environment(
        machine=platform.machine(), openvino=importlib.util.find_spec("openvino") is not None, ort=has_ort,
        ort_providers=providers,
        tensorrt=importlib.util.find_spec("tensorrt") is not None, gpu=_gpu_name(),
    )


def choose(path: str | Path, device: str = "auto", env: Environment | None = None) -> Choice:
    """The ``auto`` decision for ``path`` on ``env`` (probed when not given), with its reason."""
    env = env or probe_environment()
    path = Path(path)
    skipped: list[str] = []
    if path.suffix in ENGINE_SUFFIXES:
        return Choice("trt", "cuda", f"{path.name} is a TensorRT engine", engine_path=path)
    if device != "cpu":
        engine = path.with_suffix(".engine")
        if env.gpu and env.tensorrt and engine.exists():
            return Choice("trt", "cuda", f"TensorRT engine {engine.name} on GPU {env.gpu}", engine_path=engine)
        if env.gpu and "CUDAExecutionProvider" in env.ort_providers:
            return Choice("ort", "cuda", f"ONNX Runtime CUDA on GPU {env.gpu} (no TensorRT engine built)")
        skipped.append("no GPU" if not env.gpu else "GPU without a TensorRT engine or ORT CUDA provider")
        if device == "cuda":
            raise BackendError(f"--device cuda was asked for, but {skipped[-1]}. Install onnxruntime-gpu "
                               "(`pip install 'scopert[gpu]'`), build an engine, or use --device cpu.")
    if env.x86 and env.openvino:
        return Choice("openvino", "cpu", f"OpenVINO on the x86 CPU ({'; '.join(skipped + ['fastest CPU engine'])})",
                      skipped=tuple(skipped))
    if not env.x86:
        skipped.append(f"{env.machine} CPU (OpenVINO is the x86 path)")
    elif not env.openvino:
        skipped.append("OpenVINO not installed (`pip install 'scopert[cpu]'`)")
    if not env.ort:
        raise BackendError("no inference engine is installed. Install one: `pip install 'scopert[cpu]'`.")
    return Choice("ort", "cpu", f"ONNX Runtime on the CPU ({'; '.join(skipped)})", skipped=tuple(skipped))


def open_openvino(path: str | Path, threads: int | None, precision: str = "f32", reason: str = ""):
    """OpenVINO, or ONNX Runtime on the CPU with a warning naming the ops OpenVINO cannot run."""
    from scopert.runtime.backends.openvino import OpenVinoBackend, UnsupportedOpError

    try:
        backend = OpenVinoBackend(path, threads=threads, precision=precision)
    except UnsupportedOpError as exc:
        from scopert.runtime.backends.ort import OrtBackend

        ops = ", ".join(exc.ops) or "unnamed ops"
        log.warning("OpenVINO cannot run %s (ops: %s); falling back to ONNX Runtime on the CPU", Path(path).name, ops)
        backend = OrtBackend(path, device="cpu", threads=threads)
        backend.info.reason = f"{backend.info.reason}; fallback: OpenVINO cannot run {ops}"
        return backend
    if reason:
        backend.info.reason = f"{backend.info.reason}; chosen because: {reason}"
    return backend


def open_auto(path: str | Path, device: str = "auto", threads: int | None = None, env: Environment | None = None):
    """Open the backend ``choose`` picks and log the choice, its precision and why."""
    choice = choose(path, device, env)
    if choice.backend == "openvino":
        backend = open_openvino(path, threads, "f32", choice.reason)
    elif choice.backend == "ort":
        from scopert.runtime.backends.ort import OrtBackend

        backend = OrtBackend(path, device=choice.device, threads=threads)
        backend.info.reason = f"{backend.info.reason}; chosen because: {choice.reason}"
    else:
        raise BackendError(f"auto chose TensorRT ({choice.reason}), but the TensorRT backend is not available in "
                           "this version; pass the .onnx file with --backend ort or openvino.")
    log.info("backend auto: %s on %s, precision %s (%s)", backend.info.name, backend.info.device,
             backend.info.precision, backend.info.reason)
    return backend
