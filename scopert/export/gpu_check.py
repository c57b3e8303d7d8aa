"""``scopert doctor --gpu-check MODEL.onnx``: build the engine, compare it with ORT FP32 on real tiles, benchmark.

Steps: TensorRT + GPU present (else BackendError, exit 2, naming what is missing and that ONNX Runtime runs
instead); ``trt_builder.build_engine``; real calibration tiles (``precision.load_calibration``); ORT CPU FP32
reference (the FP32 ONNX when given, else the model itself); PSNR, max error and NaN/Inf of the engine;
GPU compute time (events around ``execute_async_v3`` only, like trtexec's "GPU Compute Time") and end-to-end
host-to-host tiles/s through ``TrtBackend.run_many``; a verdict. Imports numpy, onnxruntime, ``scopert.export``
and ``scopert.runtime.backends``; never torch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scopert.errors import BackendError

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

    trt = trt if trt is not None else import_tensorrt()
    check_strong_typing(str(trt.__version__))
    if cuda is None:
        from scopert.runtime.backends.cuda_adapter import CudaRuntime

        cuda = CudaRuntime.load()
    gpu = probe_gpu(str(trt.__version__), cuda)
    card = read_card(onnx_path)
    spatial = card.input.spatial_axes
    tiles = load_calibration(card, calib, tiles=max(2, batch), tile=dict(zip(spatial, tile)) if tile else None)
    tile_sizes = tuple(tiles.shape[1:][card.input.axes[1:].index(a)] for a in spatial)
    built = build_engine(onnx_path, tile_sizes, batch, out_dir=out_dir, trt=trt, gpu=gpu, cuda=cuda)
    backend = TrtBackend(built.engine_path, trt=trt, cuda=cuda)
    batches = [tiles[i:i + batch] for i in range(0, len(tiles) - batch + 1, batch)]
    got = np.concatenate([backend.run(b) for b in batches])
    ref = _ort_reference(Path(reference_onnx or onnx_path), card.input.name, batches)
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
        "precision": built.key.precision, "tile": list(tile_sizes), "batch": batch,
        "psnr_db_vs_ort_fp32": psnr, "max_abs_error": float(err.max()) if err.size else float("inf"),
        "nonfinite": nonfinite, "gpu_ms_per_batch_h2d_compute_d2h_median": compute_ms,
        "end_to_end_tiles_per_s": n * batch / e2e if e2e > 0 else 0.0,
        "verdict": "PASS" if ok else f"FAIL (need PSNR >= {min_psnr_db} dB and 0 NaN/Inf)",
    }


def _ort_reference(path: Path, input_name: str, batches: list[np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.get_outputs()[0].name
    return np.concatenate([session.run([out], {input_name: b})[0] for b in batches]).astype(np.float64)


def _compute_time(backend: Any, batch: np.ndarray, repeats: int) -> float:
    """Median GPU time of H2D+execute+D2H per batch from the slot's events (copies are a small share)."""
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

