"""Which backend runs a model, and why: the ``auto`` order and the OpenVINO -> ONNX Runtime fallback.

``auto`` picks, in order: a TensorRT engine on a GPU (an ``.engine``/``.plan`` file, or the engine that
``scopert build`` wrote for this ONNX: ``engines/<stem>-<digest>.engine`` whose card's key names this model's
sha256, this GPU and this TensorRT version), ONNX Runtime with CUDA when a GPU and the CUDA provider are there,
OpenVINO on an x86 CPU when it is installed, and ONNX Runtime on the CPU otherwise. The decision is a pure
function of a probed ``Environment`` (so tests can fake one) and carries its reason, which ``scopert doctor``
prints and every run logs. Opening the chosen backend is ``selection.open_choice``. Imports the standard library
only.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from scopert.errors import BackendError, ScopertError
from scopert.runtime.backends.base import REGISTRY, X86, by_priority, engine_suffixes

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = engine_suffixes()


@dataclass(frozen=True)
class Environment:
    """What the machine offers the runtime."""

    machine: str
    openvino: bool
    ort: bool
    ort_providers: tuple[str, ...] = ()
    tensorrt: bool = False
    gpu: str | None = None
    compute_capability: str | None = None  # "9.0", from nvidia-smi; None: match engines on the GPU name only
    trt_version: str | None = None  # the installed TensorRT's version; None: match any
    extra_modules: frozenset[str] = frozenset()  # other engines' probe modules found installed

    @property
    def x86(self) -> bool:
        return self.machine.lower() in X86

    def installed(self, module: str) -> bool:
        """Whether an engine's Python module (its registry ``probe``) was found."""
        return {"onnxruntime": self.ort, "openvino": self.openvino, "tensorrt": self.tensorrt}.get(module, False) \
            or module in self.extra_modules



@dataclass(frozen=True)
class Choice:
    backend: str  # 'trt', 'ort' or 'openvino'
    device: str  # 'cuda' or 'cpu'
    reason: str
    engine_path: Path | None = None
    skipped: tuple[str, ...] = field(default_factory=tuple)


def _gpu_name() -> tuple[str | None, str | None]:
    """GPU 0's name and compute capability from nvidia-smi (None, None without one)."""
    if shutil.which("nvidia-smi") is None:
        return None, None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return None, None
    name, _, cc = lines[0].rpartition(",")
    return (name.strip(), cc.strip()) if name else (cc.strip(), None)


def _trt_version() -> str | None:
    """The installed TensorRT's version, read from its package metadata (no import of tensorrt)."""
    from importlib import metadata

    for dist in metadata.packages_distributions().get("tensorrt", []) + ["tensorrt"]:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def probe_environment() -> Environment:
    """Look (without importing heavy modules, except ORT's provider list) at what is installed."""
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    providers: tuple[str, ...] = ()
    if has_ort:
        import onnxruntime as ort

        providers = tuple(ort.get_available_providers())
    has_trt = importlib.util.find_spec("tensorrt") is not None
    gpu, cc = _gpu_name()
    return Environment(
        machine=platform.machine(), openvino=importlib.util.find_spec("openvino") is not None, ort=has_ort,
        ort_providers=providers, tensorrt=has_trt, gpu=gpu, compute_capability=cc,
        trt_version=_trt_version() if has_trt else None,
        extra_modules=frozenset(e.probe for e in REGISTRY.values()
                                if e.probe and importlib.util.find_spec(e.probe) is not None),
    )


def engine_folders(onnx_path: Path) -> list[Path]:
    """Where ``scopert build`` may have put this model's engines: ``engines/`` beside the ONNX, the ONNX's
    own folder, and ``engines/`` in the working directory (build's default ``-o``)."""
    seen, out = set(), []
    for folder in (onnx_path.parent / "engines", onnx_path.parent, Path("engines")):
        key = folder.resolve()
        if key not in seen and folder.is_dir():
            seen.add(key)
            out.append(folder)
    return out


def find_engine(onnx_path: Path, env: Environment) -> tuple[Path | None, list[str]]:
    """The newest engine built for this model on this GPU and TensorRT version, and why others were passed over.

    An engine matches when its sidecar card's key (written by ``scopert build``) names the ONNX's sha256, this
    GPU (name and, when known, compute capability) and this TensorRT version. Only sidecar cards are read."""
    from scopert.checksum import sha256_file
    from scopert.runtime.backends.engine_key import read_engine_card

    candidates = [p for folder in engine_folders(onnx_path) for suffix in ENGINE_SUFFIXES
                  for p in folder.glob(f"{glob.escape(onnx_path.stem)}-*{suffix}")]
    if not candidates:
        return None, []
    digest = sha256_file(onnx_path)
    matches, passed = [], []
    for engine in candidates:
        try:
            _, key, _ = read_engine_card(engine)
        except ScopertError as exc:
            passed.append(f"{engine.name}: {exc}")
            continue
        if key.model_sha256 != digest:
            passed.append(f"{engine.name} was built from another version of {onnx_path.name}")
        elif key.gpu_name != env.gpu or (env.compute_capability and key.compute_capability != env.compute_capability):
            passed.append(f"{engine.name} was built for {key.gpu_name} ({key.compute_capability}), not {env.gpu}")
        elif env.trt_version and key.trt_version != env.trt_version:
            passed.append(f"{engine.name} was built with TensorRT {key.trt_version}, not {env.trt_version}")
        else:
            matches.append(engine)
    if not matches:
        return None, passed
    return max(matches, key=lambda p: p.stat().st_mtime_ns), passed


def choose(path: str | Path, device: str = "auto", env: Environment | None = None) -> Choice:
    """The ``auto`` decision for ``path`` on ``env`` (probed when not given), with its reason: the registry's
    (engine, device) pairs in priority order, the first one installed and able to run here."""
    env = env or probe_environment()
    path = Path(path)
    for entry in REGISTRY.values():
        if path.suffix in entry.engine_suffixes:  # a built engine: only its engine runs it
            return Choice(entry.name, entry.devices[0], f"{path.name} is a {entry.title} engine", engine_path=path)
    skipped: list[str] = []
    gpu_done = device == "cpu"
    for entry, dev in by_priority("auto" if device == "auto" else device):
        if dev == "cpu" and not gpu_done:  # every GPU engine passed over: say why once, then the CPU engines
            gpu_done = True
            skipped.append(_no_gpu_engine(env))
        if dev == "cuda":
            if not env.gpu or not env.installed(entry.probe) or (
                    entry.cuda_provider and entry.cuda_provider not in env.ort_providers):
                continue
            if entry.built_engine:
                engine, passed = find_engine(path, env)
                for why in passed:
                    log.warning("backend auto: not using engine %s; rebuild it here with `scopert build %s "
                                "--tile ...`", why, path.name)
                skipped.extend(f"engine {why}" for why in passed)
                if engine is not None:
                    return Choice(entry.name, "cuda", f"{entry.title} engine {engine.name} built for this model on "
                                  f"GPU {env.gpu}", engine_path=engine)
                continue
            why = "; ".join(skipped) or "no TensorRT engine built for it"
            return Choice(entry.name, "cuda", f"{entry.title} CUDA on GPU {env.gpu} ({why})", skipped=tuple(skipped))
        if entry.machines and env.machine.lower() not in entry.machines:
            skipped.append(f"{env.machine} CPU ({entry.title} is the x86 path)")
        elif not env.installed(entry.probe):
            skipped.append(f"{entry.title} not installed (`pip install 'scopert[{entry.install}]'`)")
        else:
            first = entry.name == by_priority("cpu")[0][0].name
            notes = skipped + (["fastest CPU engine"] if first else [])
            where = "the x86 CPU" if entry.machines else "the CPU"
            return Choice(entry.name, "cpu", f"{entry.title} on {where} ({'; '.join(notes)})", skipped=tuple(skipped))
    if not gpu_done:  # --device cuda: only GPU engines were candidates
        raise BackendError(f"--device cuda was asked for, but {_no_gpu_engine(env)}. Install onnxruntime-gpu "
                           "(`pip install 'scopert[gpu]'`), build an engine, or use --device cpu.")
    raise BackendError("no inference engine is installed. Install one: `pip install 'scopert[cpu]'`.")


def _no_gpu_engine(env: Environment) -> str:
    return "no GPU" if not env.gpu else "GPU without a TensorRT engine or ORT CUDA provider"
