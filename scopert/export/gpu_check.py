"""``scopert doctor --gpu-check MODEL.onnx``: build the engine, compare it with ORT FP32 on real tiles, benchmark.

Steps: TensorRT + GPU present (else BackendError, exit 2, naming what is missing and that ONNX Runtime runs
instead); ``trt_builder.build_engine``; real calibration tiles (``precision.load_calibration``); the ORT CPU
reference is always an FP32 graph: ``--reference FP32.onnx``, else the FP32 export the FP16 model's card
names (``precision.fp32_reference``, checked by sha256), else ``NAME.onnx`` beside ``NAME.fp16.onnx``, else
the model itself when it is FP32; an FP16 model without an FP32 reference is a ConfigError (comparing the FP16
graph with itself on ORT would hide every FP16 error). The report names the reference and how it was found.
The comparison is Polygraphy's: ``Comparator.run`` over its ``OnnxrtRunner`` (the FP32 reference on the CPU) and
ScopeRT's TensorRT backend wrapped as a Polygraphy runner (the runtime path users run, so the check covers our
buffers, slots and profiles, not only the engine), then ``Comparator.compare_accuracy`` (``CompareFunc.simple``,
mean error stat); ScopeRT's PSNR, max error and NaN/Inf counts on top. ``save_outputs`` writes the tiles and the
engine's outputs in Polygraphy's JSON (``RunResults``) with the model's and reference's sha256, and
``compare_saved`` (``scopert doctor --compare-saved FILE``) repeats the comparison on a machine without a GPU.
Then the GPU time per batch from the slot's events, which
bracket the H2D copy, ``execute_async_v3`` and the D2H copy (so it is copy-in + execute + copy-out, not
trtexec's compute-only "GPU Compute Time"); end-to-end host-to-host tiles/s through ``TrtBackend.run_many``;
a verdict. Imports numpy, polygraphy (ONNX Runtime runner), ``scopert.export`` and ``scopert.runtime.backends``; never torch.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scopert.card import ModelCard
from scopert.checksum import sha256_file
from scopert.errors import BackendError, ConfigError, InputError, RunError

log = logging.getLogger(__name__)

MIN_PSNR_DB = 40.0


def run_gpu_check(onnx_path: str | os.PathLike, calib: Sequence[str | os.PathLike] | None = None, *,
                  reference_onnx: str | os.PathLike | None = None, tile: tuple[int, ...] | None = None,
                  batch: int = 1, repeats: int = 20, out_dir: str | os.PathLike = "engines",
                  min_psnr_db: float = MIN_PSNR_DB, trt: Any = None, cuda: Any = None,
                  save_outputs: str | os.PathLike | None = None) -> dict[str, Any]:
    """Build, compare and benchmark on this GPU; returns a JSON-able dict with a 'verdict'. ``save_outputs``: also
    write the tiles and the engine's outputs for ``compare_saved`` on another machine."""
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
    try:
        batches = [tiles[i:i + batch] for i in range(0, len(tiles) - batch + 1, batch)]
        feeds = [{card.input.name: b} for b in batches]
        compared = compare_runs(reference, feeds, backend_runner(backend, ENGINE_RUNNER))
        compute_ms = _compute_time(backend, batches[0], repeats)
        t0 = time.perf_counter()
        n = 0
        for _ in backend.run_many(batches[i % len(batches)] for i in range(repeats)):
            n += 1
        e2e = time.perf_counter() - t0
    finally:
        backend.close()
    report = {
        "gpu": gpu.name, "compute_capability": gpu.compute_capability, "tensorrt": gpu.trt_version,
        "engine": str(built.engine_path), "engine_reused": built.reused, "build_seconds": built.build_seconds,
        "precision": built.key.precision, "tf32": built.key.tf32, "profiles": built.key.profiles,
        "tile": list(tile_sizes), "batch": batch,
        "reference_onnx": str(reference), "reference_found_by": found_by,
        **verdict(compared.metrics, compared.polygraphy_passed, min_psnr_db),
        "gpu_ms_per_batch_h2d_compute_d2h_median": compute_ms,
        "end_to_end_tiles_per_s": n * batch / e2e if e2e > 0 else 0.0,
    }
    if save_outputs is not None:
        report["saved_outputs"] = str(save_run(save_outputs, Path(onnx_path), reference, card, feeds,
                                               compared.engine_results, report))
    return report


# ---- Polygraphy comparison -------------------------------------------------------------------------------
ENGINE_RUNNER = "scopert-trt"
REFERENCE_RUNNER = "onnxrt-fp32"
SAVED_FORMAT = "scopert-gpu-outputs/1"
COMPARE_ATOL = COMPARE_RTOL = 1e-2  # Polygraphy's pass rule (mean error stat), as TensorRT's own FP16 recipe


@dataclass
class Compared:
    metrics: dict[str, Any]
    polygraphy_passed: bool
    engine_results: Any  # Polygraphy's list of IterationResult of the engine runner


def backend_runner(backend: Any, name: str) -> Any:
    """A ScopeRT backend as a Polygraphy runner, so that ``Comparator`` drives our runtime path."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class ScopertRunner(BaseRunner):
        def activate_impl(self) -> None:
            pass

        def deactivate_impl(self) -> None:
            pass

        def get_input_metadata_impl(self) -> Any:
            rank = len(getattr(backend, "profile", None).min) if getattr(backend, "profile", None) else None
            return TensorMetadata().add(backend.input_name, np.float32, shape=[None] * rank if rank else None)

        def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            t0 = time.perf_counter()
            out = backend.run(feed_dict[backend.input_name])
            self.inference_time = time.perf_counter() - t0
            return {backend.output_name: out}

    return ScopertRunner(name=name)


def compare_runs(reference: Path, feeds: list[dict[str, np.ndarray]], engine_runner: Any = None,
                 engine_results: Any = None) -> Compared:
    """Polygraphy's Comparator: the FP32 reference on ORT (CPU) against the engine, live or from a saved run."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy import comparator as pg_comparator

    runners = [OnnxrtRunner(SessionFromOnnx(str(reference), providers=["cpu"]), name=REFERENCE_RUNNER)]
    if engine_runner is not None:
        runners.append(engine_runner)
    results = Comparator.run(runners, data_loader=feeds)
    if not results:
        raise RunError("Polygraphy's comparator ran no inference (a runner failed; see the log above).")
    if engine_runner is None:
        results.append((ENGINE_RUNNER, engine_results))
    engine = results[ENGINE_RUNNER]
    simple = getattr(pg_comparator, "SimpleCompareFunc", None) or CompareFunc.simple  # 0.53+ / older
    accuracy = Comparator.compare_accuracy(results, compare_func=simple(
        atol=COMPARE_ATOL, rtol=COMPARE_RTOL, check_error_stat="mean"))
    ref = np.concatenate([np.asarray(next(iter(it.values()))) for it in results[REFERENCE_RUNNER]])
    got = np.concatenate([np.asarray(next(iter(it.values()))) for it in engine])
    return Compared(image_metrics(got, ref), bool(accuracy), engine)


def image_metrics(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """ScopeRT's numbers on top of Polygraphy's: PSNR over the reference's range, max error, NaN/Inf count."""
    if got.shape != ref.shape:
        raise RunError(f"the engine's outputs {got.shape} differ in shape from the reference's {ref.shape}; rebuild "
                       "the engine from this model.")
    from scopert.runtime.compare import compare

    c = compare(ref, got)
    return {"psnr_db_vs_ort_fp32": c.psnr_db, "max_abs_error": c.max_abs, "nonfinite": c.nonfinite}


def verdict(metrics: dict[str, Any], polygraphy_passed: bool, min_psnr_db: float) -> dict[str, Any]:
    ok = metrics["nonfinite"] == 0 and metrics["psnr_db_vs_ort_fp32"] >= min_psnr_db
    return {**metrics, "polygraphy_compare": "PASSED" if polygraphy_passed else "FAILED",
            "polygraphy_rule": f"CompareFunc.simple(atol={COMPARE_ATOL}, rtol={COMPARE_RTOL}, mean)",
            "verdict": "PASS" if ok else f"FAIL (need PSNR >= {min_psnr_db} dB and 0 NaN/Inf)"}


def save_run(path: str | os.PathLike, model: Path, reference: Path, card: ModelCard, feeds: list[dict],
             engine_results: Any, report: dict[str, Any]) -> Path:
    """The tiles and the engine's outputs, in Polygraphy's JSON, with what they were made from (atomic)."""
    from polygraphy.json import to_json

    path = Path(path)
    meta = {"format": SAVED_FORMAT, "model": {"file": model.name, "sha256": sha256_file(model)},
            "reference": {"file": reference.name, "sha256": sha256_file(reference)},
            "input_name": card.input.name, "output_name": card.output.name,
            "engine": {k: report[k] for k in ("gpu", "compute_capability", "tensorrt", "precision", "tile", "batch")}}
    text = to_json({"scopert": meta, "inputs": feeds, "results": engine_results})
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def compare_saved(saved: str | os.PathLike, reference_onnx: str | os.PathLike | None = None,
                  min_psnr_db: float = MIN_PSNR_DB) -> dict[str, Any]:
    """``scopert doctor --compare-saved FILE``: a GPU run's outputs against ORT FP32 here (no GPU). Writes nothing."""
    from polygraphy.json import from_json

    path = Path(saved)
    if not path.is_file():
        raise InputError(f"{path} does not exist; pass the file `scopert doctor --gpu-check ... --save-outputs` wrote.")
    try:
        data = from_json(path.read_text())
        meta = data["scopert"]
        feeds, results = list(data["inputs"]), data["results"]
    except Exception as exc:
        raise InputError(f"{path} is not a saved GPU run ({type(exc).__name__}: {str(exc)[:120]}). Pass the file "
                         "`scopert doctor --gpu-check MODEL.onnx --save-outputs FILE` wrote.") from None
    if not isinstance(meta, dict) or meta.get("format") != SAVED_FORMAT:
        raise InputError(f"{path} is not a saved GPU run of this ScopeRT version (format {meta.get('format')!r}, "
                         f"expected {SAVED_FORMAT!r}); save it again with `scopert doctor --gpu-check`.")
    recorded = meta["reference"]
    if reference_onnx is None:
        candidates = [path.parent / recorded["file"], Path(recorded["file"])]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"the FP32 reference {recorded['file']} of {path.name} is not beside it; pass it with "
                              "--reference FP32.onnx.")
        reference = found
    else:
        reference = Path(reference_onnx)
        if not reference.is_file():
            raise ConfigError(f"--reference {reference} does not exist; pass the FP32 export of the model.")
    if sha256_file(reference) != recorded["sha256"]:
        raise InputError(f"{path.name} holds outputs compared against {recorded['file']} (sha256 "
                         f"{recorded['sha256'][:12]}...), but {reference} differs (sha256 "
                         f"{sha256_file(reference)[:12]}...): the saved run is from another model. Pass the FP32 "
                         "export it was made from with --reference, or save a new run on the GPU.")
    if any(set(f) != {meta["input_name"]} for f in feeds):
        raise InputError(f"{path.name}: the saved inputs do not name the model's input {meta['input_name']!r}.")
    compared = compare_runs(reference, feeds, engine_results=results)
    return {"saved": str(path), "model": meta["model"]["file"], "reference_onnx": str(reference), **meta["engine"],
            **verdict(compared.metrics, compared.polygraphy_passed, min_psnr_db)}


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

