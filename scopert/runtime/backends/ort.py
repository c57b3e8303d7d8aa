"""ONNX Runtime backend: CPU by default, CUDA and TensorRT execution providers when installed.

onnxruntime-gpu does not raise when a GPU provider fails to load: it logs and runs on the CPU. So after
the session is created we read back the providers it really uses, and a requested GPU that fell back
is an error (``device='cuda'``) or a warning (``device='auto'``). Imports onnxruntime lazily.

The GPU providers take the strongly typed FP16 ONNX of ``scopert export --fp16`` as it is: the CUDA
provider runs FP16 nodes natively, and the TensorRT provider builds from the graph's own types
(``trt_fp16_enable`` stays off, so the FP32 islands are not lowered). TensorRT engines and the timing
cache go to ``engines/``, under a folder keyed by the model's hash and the ONNX Runtime version, because
ORT neither invalidates its engine cache when the model or TensorRT changes nor tells a stale cache apart.
The TensorRT provider also gets the tile plan's optimization profile (``trt_profile_min/opt/max_shapes``):
without one it builds an engine for the first shape it meets and rebuilds for every new one (a short last
batch, an image smaller than a tile). The profile is the caller's, else the card's default tile plan
(batch 1..``DEFAULT_TRT_EP_BATCH``); ``tile_range`` hands its opt tile to ``Model.default_tile``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from scopert.card import METADATA_KEY, ModelCard
from scopert.checksum import sha256_file
from scopert.errors import BackendError, InputError, ScopertError
from scopert.runtime.backends.base import Backend, BackendInfo
from scopert.runtime.backends.engine_key import ProfileShapes, tile_profile

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
DEFAULT_TRT_EP_BATCH = 4  # profile max batch for the TensorRT provider when the caller names no plan


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendError(
            "ONNX Runtime is not installed. Install it with `pip install 'scopert[cpu]'` (CPU) or "
            "`pip install 'scopert[gpu]'` (NVIDIA GPU); not both, they share one module name."
        ) from None
    return ort


def ort_trt_cache_dir(model_path: Path, engines_dir: Path, ort_version: str) -> Path:
    """Where the TensorRT provider keeps this model's engines: one folder per model content and ORT version."""
    return engines_dir / "ort-trt" / f"{model_path.stem}-{sha256_file(model_path)[:16]}-ort{ort_version}"


def card_trt_profile(model_path: Path, batch: int = DEFAULT_TRT_EP_BATCH) -> ProfileShapes | None:
    """The profile of the card's default tile plan (None without a card): min = batch 1 and the smallest window
    the tiler sends, opt = max = (batch, nominal tile). The nominal tile (``tile_cost.nominal_tile``): the card's,
    else 32 along z and 256 along y/x, at least 4*halo+divisor; ``Model.default_tile`` uses this engine's profile."""
    from scopert.card import card_from_metadata
    from scopert.runtime.onnx_file import onnx_metadata

    try:
        card = card_from_metadata(onnx_metadata(model_path), where=f"{Path(model_path).name}:metadata")
    except (ScopertError, ValueError):
        return None
    if card is None:
        return None
    from scopert.runtime.tile_cost import nominal_tile

    return tile_profile(card, tuple(nominal_tile(card, ax) for ax in card.input.spatial_axes), batch)


def trt_provider_options(model_path: Path, engines_dir: Path, ort_version: str,
                         profile: ProfileShapes | None = None) -> dict[str, str]:
    """TensorRT execution provider options: caches in ``engines/``, the precision from the ONNX itself, and the
    tile plan's optimization profile when one is known."""
    options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(ort_trt_cache_dir(model_path, engines_dir, ort_version)),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(engines_dir / "ort-trt"),  # shared: timings do not depend on the model
        "trt_fp16_enable": "False",
    }
    if profile is not None:
        options.update(profile.as_ort_options())
    return options


def _providers(ort, device: str, model_path: Path, engines_dir: Path, profile: ProfileShapes | None = None) -> list:
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    wanted: list = []
    if "TensorrtExecutionProvider" in available:
        profile = profile or card_trt_profile(model_path)
        options = trt_provider_options(model_path, engines_dir, ort.__version__, profile)
        Path(options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        wanted.append(("TensorrtExecutionProvider", options))
    if "CUDAExecutionProvider" in available:
        wanted.append(("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"}))
    if device == "cuda" and not wanted:
        raise BackendError(
            "--device cuda was asked for, but this ONNX Runtime has no GPU provider "
            f"(available: {', '.join(available)}). Install onnxruntime-gpu (`pip install 'scopert[gpu]'`) "
            "or use --device cpu."
        )
    return wanted + ["CPUExecutionProvider"]


def model_precision(metadata: dict[str, str]) -> str:
    """'fp16' for a strongly typed FP16 export (its card says so), else 'fp32'."""
    text = metadata.get(METADATA_KEY)
    if not text:
        return "fp32"
    try:  # one field, peeked: the card itself is read (and checked) once, by ``load``
        precision = json.loads(text).get("precision") or {}
        mode = precision.get("mode", "") if isinstance(precision, dict) else ""
    except (ValueError, AttributeError):
        return "fp32"  # the runtime reports an unreadable card itself, with its fix
    return "fp16" if str(mode).startswith("fp16") else "fp32"


class OrtBackend(Backend):
    """One InferenceSession; ``run`` releases the GIL, so the pipeline's other threads keep working."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None,
                 engines_dir: str | Path = "engines", trt_profile: ProfileShapes | None = None) -> None:
        ort = _import_ort()
        path = Path(path)
        if not path.exists():
            raise InputError(f"model file {path} does not exist.")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        # No spin-waiting intra-op threads (issue 16): on a few cores they burned ~40 % more CPU per predict
        # than the work needs, taken from the pipeline's reader/stitcher threads (benchmarks/ort_spinning.py).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                providers=_providers(ort, device, path, Path(engines_dir),
                                                                     trt_profile))
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
        self.trt_profile = (trt_profile or card_trt_profile(path)) if "TensorrtExecutionProvider" in used else None
        precision = model_precision(self.metadata)
        if precision == "fp16" and not on_gpu:
            log.warning("%s is an FP16 model: ONNX Runtime on the CPU computes its FP16 nodes in FP32 with extra casts, "
                        "so it is slower than the FP32 export and no faster. On the CPU, run the FP32 file.", path)
        self.info = BackendInfo(
            name="ort", device="cuda" if on_gpu else "cpu", precision=precision, providers=used,
            reason=f"ONNX Runtime {ort.__version__} with {used[0]}",
        )

    def tile_range(self) -> dict[str, tuple[int, int, int]]:
        """(min, opt, max) per tiled axis of the TensorRT provider's profile; empty when it does not run."""
        p = self.trt_profile
        if p is None or METADATA_KEY not in self.metadata:
            return {}
        axes = ModelCard.from_json(self.metadata[METADATA_KEY]).input.axes
        return {ax: (lo, op, hi) for ax, lo, op, hi in zip(axes, p.min, p.opt, p.max) if ax in "tzyx"}

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.session is None:
            raise BackendError("this ONNX Runtime backend was closed; open the model again (scopert.runtime.load).")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self._cuda:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, batch)
            binding.bind_output(self.output_name, "cuda")
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def close(self) -> None:
        """Release the session (ONNX Runtime frees it, and any GPU memory, with the last reference)."""
        self.session = None
