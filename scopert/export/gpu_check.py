"""``scopert doctor --gpu-check MODEL.onnx``: build the engine, compare it with ORT FP32 on real tiles, benchmark.

Steps: TensorRT + GPU present (else BackendError, exit 2, naming what is missing and that ONNX Runtime runs
instead); ``trt_builder.build_engine``; real calibration tiles (``precision.load_calibration``); the ORT CPU
reference is always an FP32 graph: ``--reference FP32.onnx``, else the FP32 export the FP16 model's card
names (``precision.fp32_reference``, checked by sha256), else ``NAME.onnx`` beside ``NAME.fp16.onnx``, else
the model itself when it is FP32; an FP16 model without an FP32 reference is a ConfigError (comparing the FP16
graph with itself on ORT would hide every FP16 error). The report names the reference and how it was found.
Then PSNR, max error and NaN/Inf of the engine; the GPU time per batch from the slot's events, which
bracket the H2D copy, ``execute_async_v3`` and the D2H copy (so it is copy-in + execute + copy-out, not
trtexec's compute-only "GPU Compute Time"); end-to-end host-to-host tiles/s through ``TrtBackend.run_many``;
a verdict. Imports numpy, onnxruntime, ``scopert.export`` and ``scopert.runtime.backends``; never torch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scopert.card import ModelCard
from scopert.checksum import sha256_file
from scopert.errors import BackendError, ConfigError

log = logging.getLogger(__name__)

MIN_PSNR_DB = 40.0


def run_gpu_check(onnx_path: str | os.PathLike, calib: Sequence[str | os.PathLike] | None = None, *,
                  reference_onnx: str | os.PathLike | None = None, tile: tuple[int, ...] | None = None,
                  batch: int = 1, repeats: int = 20, out_dir: str | os.PathLike = "engines",
                  min_psnr_db: float = MIN_PSNR_DB, trt: Any = None, cuda: Any = None) -> dict[str, Any]:
    """Build, compare and benchmark on this GPU; returns a JSON-able dict with a 'verdict'."""
    from scopert.export.onnx_export import read_card
    from scopert.export.precision import load_calibration
    from scopert.export.trt_builder import build_engine, check_strong_typing, import_tensorrt, probe_gpu
    from scopert.runtime.backends.trt import TrtBackend
    from scopert.runtime.onnx_file import check_external_data

    trt = trt if trt is not None else import_tensorrt()
    check_strong_typing(str(trt.__version__))
    if cuda is None:
        from scopert.runtime.backends.cuda_adapter import CudaRuntime

        cuda = CudaRuntime.load()
    gpu = probe_gpu(str(trt.__version__), cuda)
    card = read_card(onnx_path)
    reference, found_by = find_fp32_reference(Path(onnx_path), card, reference_onnx)
    check_external_data(reference)  # read_card checked onnx_path; the reference is read by ORT below
    spatial = card.input.spatial_axes
    tiles = load_calibration(card, calib, tiles=max(2, batch), tile=dict(zip(spatial, tile)) if tile else None)
    tile_sizes = tuple(tiles.shape[1:][card.input.axes[1:].index(a)] for a in spatial)
    built = build_engine(onnx_path, tile_sizes, batch, out_dir=out_dir, trt=trt, gpu=gpu, cuda=cuda)
    backend = TrtBackend(built.engine_path, trt=trt, cuda=cuda)
    batches = [tiles[i:i + batch] for i in range(0, len(tiles) - batch + 1, batch)]
    got = np.concatenate([backend.run(b) for b in batches])
    ref = _ort_reference(reference, card.input.name, batches)
    finite = np.isfinite(got)
    err = np.abs(got[finite].astype(np.float64) - ref[finite])
    peak = float(ref.max() - ref.min()) or 1.0
    mse = float(np.mean(err ** 2)) if err.size else float("inf")
    psnr = float("inf") if mse == 0 else 10 * math.log10(peak * peak / mse)
    compute_ms = _compute_time(backend, batches[0], repeats)
    t0 = time.perf_counter()
    n = 0
    for _ in backend.run_many(batches[i % len(batches)] for i in range(repeats)):
        n += 1
    e2e = time.perf_counter() - t0
    backend.close()
    nonfinite = int(np.sum(~finite))
    ok = nonfinite == 0 and psnr >= min_psnr_db
    return {
        "gpu": gpu.name, "compute_capability": gpu.compute_capability, "tensorrt": gpu.trt_version,
        "engine": str(built.engine_path), "engine_reused": built.reused, "build_seconds": built.build_seconds,
        "precision": built.key.precision, "tf32": built.key.tf32, "profiles": built.key.profiles,
        "tile": list(tile_sizes), "batch": batch,
        "reference_onnx": str(reference), "reference_found_by": found_by, "psnr_db_vs_ort_fp32": psnr, "max_abs_error": float(err.max()) if err.size else float("inf"),
        "nonfinite": nonfinite, "gpu_ms_per_batch_h2d_compute_d2h_median": compute_ms,
        "end_to_end_tiles_per_s": n * batch / e2e if e2e > 0 else 0.0,
        "verdict": "PASS" if ok else f"FAIL (need PSNR >= {min_psnr_db} dB and 0 NaN/Inf)",
    }


def find_fp32_reference(onnx_path: Path, card: ModelCard,
                        reference: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The FP32 ONNX to compare against, and how it was found (see the module docstring)."""
    from scopert.export.trt_builder import onnx_precision

    if reference is not None:
        ref = Path(reference)
        if not ref.is_file():
            raise ConfigError(f"--reference {ref} does not exist; pass the FP32 export of the model.")
        if onnx_precision(ref) != "fp32":
            raise ConfigError(f"--reference {ref} holds FP16 tensors; pass the FP32 export (`scopert export` without "
                              "--fp16), so the check compares the engine with FP32.")
        return ref, "--reference"
    if onnx_precision(onnx_path) == "fp32":
        return onnx_path, "the model itself (FP32)"
    recorded = card.precision.get("fp32_reference") if isinstance(card.precision, dict) else None
    if isinstance(recorded, dict) and recorded.get("file"):
        ref = onnx_path.parent / str(recorded["file"])
        if ref.is_file() and sha256_file(ref) == recorded.get("sha256"):
            return ref, "the FP16 card (precision.fp32_reference, sha256 checked)"
        log.warning("the card names FP32 export %s, but it is %s", ref, "changed" if ref.is_file() else "missing")
    name = onnx_path.name
    if name.endswith(".fp16.onnx"):
        ref = onnx_path.with_name(name[: -len(".fp16.onnx")] + ".onnx")
        if ref.is_file() and onnx_precision(ref) == "fp32":
            return ref, f"beside the FP16 file ({ref.name})"
    raise ConfigError(
        f"{onnx_path.name} is an FP16 model and its FP32 export was not found (not named in its card, no "
        f"{name.replace('.fp16.onnx', '.onnx') if name.endswith('.fp16.onnx') else 'NAME.onnx'} beside it). Pass "
        "it with --reference FP32.onnx: comparing the FP16 graph with itself would hide every FP16 error."
    )


def _ort_reference(path: Path, input_name: str, batches: list[np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.get_outputs()[0].name
    return np.concatenate([session.run([out], {input_name: b})[0] for b in batches]).astype(np.float64)


def _compute_time(backend: Any, batch: np.ndarray, repeats: int) -> float:
    """Median GPU time per batch between the slot's events: H2D copy + execute + D2H copy (not compute only)."""
    cuda = backend._cuda
    times = []
    for _ in range(max(1, repeats)):
        ticket = backend.submit(batch)
        slot = backend._slots[ticket]
        backend.collect(ticket)
        try:
            times.append(cuda.event_elapsed_ms(slot.started, slot.done))
        except (AttributeError, BackendError):
            return float("nan")
    return float(np.median(times))

