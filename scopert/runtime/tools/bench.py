"""What ``scopert bench`` measures: the raw backend against the whole pipeline on the same tile batches
(``bench_pipeline``), the tile and batch that run fastest (``tune_tile``), and the CPU engines side by side
(``compare_engines``). Timings alternate within one process, so the ratios hold on a noisy machine.
Imports numpy and the runtime only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from scopert.errors import ConfigError, ScopertError
from scopert.runtime.model import Model
from scopert.runtime.planning import tile_input
from scopert.runtime.stitch import SlabSink
from scopert.runtime.tiling import round_up

TUNE_SCALES = (0.5, 1.0, 2.0)
TUNE_BATCHES = (1, 2, 4)
TUNE_MAX_VOXELS = 1 << 24  # per batch: keeps a sweep within a few hundred MB


def _random_batch(model: Model, tile: dict[str, int], batch: int) -> np.ndarray:
    """A normalized-range batch in the model's own layout (speed does not depend on the content)."""
    channels = (model.card.input.time_window or 1) if model.in_layout.channel == "t" else (
        model.card.input.channels if "c" in model.card.input.axes else 1)
    x = np.random.default_rng(0).uniform(0, 1, (batch, channels) + tuple(tile.values())).astype(np.float32)
    return model.in_layout.to_model(x)


class _NullSink:
    def write(self, slab: np.ndarray, start: int) -> None:
        pass


def synthetic_volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A uint16 volume of random counts (200..2000): throughput does not depend on the content."""
    rng = np.random.default_rng(seed)
    base = rng.integers(200, 2000, size=shape, dtype=np.uint16)
    return base


def bench_pipeline(model: Model, shape: tuple[int, ...], tile: tuple[int, ...] | None = None, batch: int = 1,
                   stitch: str = "crop", repeats: int = 2, volume: np.ndarray | None = None,
                   sink: SlabSink | None = None) -> dict[str, Any]:
    volume = synthetic_volume(shape) if volume is None else volume
    internal, _, norm = model.prepare(volume)
    rp = model.make_plan(dict(zip(model.in_layout.tiled, internal.shape[1:])), tile, None, stitch, batch)
    tiles = list(rp.plan)
    # The raw figure: the same tile batches, prepared beforehand, through the backend alone.
    sizes = [p.tile for p in rp.plan.plans]
    batches = []
    for i in range(0, len(tiles), batch):
        group = tiles[i:i + batch]
        arrays = [tile_input(internal, norm, rp.plan, t) for t in group]
        batches.append(model.in_layout.to_model(np.stack(arrays)))
    raw_times, pipe_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            model.backend.run(b)
        raw_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.predict_to(volume, sink or _NullSink(), tile, None, stitch, batch)
        pipe_times.append(time.perf_counter() - t0)
    voxels = float(np.prod(shape))
    raw, pipe = min(raw_times), min(pipe_times)
    stats = model.last_stats
    return {
        "backend": model.backend.info.reason,
        "volume_shape": list(shape), "tile": sizes, "batch": batch, "tiles": len(tiles), "stitch": rp.stitch,
        "raw_seconds": round(raw, 3), "pipeline_seconds": round(pipe, 3),
        "raw_voxels_per_s": round(voxels / raw), "pipeline_voxels_per_s": round(voxels / pipe),
        "raw_MB_per_s_uint16": round(voxels * 2 / raw / 1e6, 2),
        "pipeline_MB_per_s_uint16": round(voxels * 2 / pipe / 1e6, 2),
        "pipeline_efficiency": round(raw / pipe, 3),
        "stage_waits_s": {k: round(v.wait_in, 3) for k, v in stats.stages.items()} if stats else {},
        "repeats": repeats,
    }


def tune_tile(model: Model, shape: dict[str, int], scales: tuple[float, ...] = TUNE_SCALES,
              batches: tuple[int, ...] = TUNE_BATCHES, repeats: int = 2) -> dict[str, Any]:
    """Pick the tile and batch that write the most output voxels per second on this backend.

    Candidates scale the model's default tile (every tiled axis but time, which is the model's window) and
    keep the divisor and a core of at least half the tile after the halo. Each runs as one raw batch
    (warm-up, then the best of ``repeats``); the figure counts only the core a crop stitcher keeps, so
    small tiles pay for their halo. Returns every row and the pick.
    """
    card = model.card
    base = model.default_tile(shape)
    rows: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for scale in scales:
        tile = {}
        for ax, size in base.items():
            d, h = card.input.divisor.get(ax, 1), card.halo.get(ax, 0)
            want = size if ax == "t" else max(int(size * scale), 4 * h + d)
            tile[ax] = min(round_up(want, d), round_up(shape[ax] + 2 * h, d))
        for batch in batches:
            key = (tuple(tile.values()), batch)
            if key in seen or batch * int(np.prod(list(tile.values()))) > TUNE_MAX_VOXELS:
                continue
            seen.add(key)
            x = _random_batch(model, tile, batch)
            model.backend.run(x)  # warm-up: compile, allocate
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                model.backend.run(x)
                best = min(best, time.perf_counter() - t0)
            core = int(np.prod([max(n - 2 * card.halo.get(ax, 0), 1) if ax != "t" else 1
                                for ax, n in tile.items()]))
            rows.append({"tile": dict(tile), "batch": batch, "seconds": round(best, 4),
                         "core_voxels_per_s": round(batch * core / best)})
    if not rows:
        raise ConfigError(f"no tile candidate fits a batch of {TUNE_MAX_VOXELS} voxels; pass --tile and --batch.")
    pick = max(rows, key=lambda r: r["core_voxels_per_s"])
    return {"rows": rows, "pick": pick}


def compare_engines(path: str | Path, model: Model, tile: dict[str, int], batch: int = 1,
                    repeats: int = 3) -> dict[str, Any]:
    """The runtime's CPU engines on one tile batch, side by side: ORT FP32, OpenVINO f32, and OpenVINO bf16
    where the CPU has bf16. Engines alternate within each repeat (best of ``repeats``), so the ratios to ORT
    hold on a loaded machine; each output is compared with ORT's (PSNR). torch is not among them: an ONNX
    file has no torch model (``benchmarks/cpu_engines.py`` adds it)."""
    from scopert.runtime.backends.ort import OrtBackend
    from scopert.runtime.cpu import cpu_caps
    from scopert.runtime.timing import time_engines
    from scopert.runtime.compare import psnr_db

    x = _random_batch(model, tile, batch)
    engines: dict[str, Any] = {"ort_fp32": OrtBackend(path, device="cpu")}
    notes: dict[str, str] = {}
    try:
        from scopert.runtime.backends.openvino import OpenVinoBackend

        engines["openvino_f32"] = OpenVinoBackend(path, precision="f32")
        if cpu_caps().bf16:
            engines["openvino_bf16"] = OpenVinoBackend(path, precision="bf16")
        else:
            notes["openvino_bf16"] = "not run: this CPU has no bf16"
    except ScopertError as exc:  # not installed, or an op it cannot compile
        notes["openvino"] = f"not run: {exc}"
    outputs = {name: engine.run(x) for name, engine in engines.items()}  # each output, compared with ORT's
    best = time_engines({name: (lambda e=engine: e.run(x)) for name, engine in engines.items()}, repeats)
    rows = {name: {"seconds": round(best[name], 4), "x_ort": round(best["ort_fp32"] / best[name], 3),
                   "psnr_vs_ort_db": None if name == "ort_fp32" else round(float(psnr_db(outputs["ort_fp32"], out)), 1)}
            for name, out in outputs.items()}
    roof = roofline_rows(path, x.shape, {name: best[name] for name in rows}, notes, model.card.output.axes)
    for name, extra in roof.get("engines", {}).items():
        rows[name].update(extra)
    return {"tile": dict(tile), "batch": batch, "engines": rows, "notes": notes,
            "roofline": {k: v for k, v in roof.items() if k != "engines"}}


def run_roofline(path: str | Path, model: Model, result: dict[str, Any]) -> dict[str, Any]:
    """GFLOP/s and fraction of the measured peak of the engine and precision a plain bench ran (its raw loop:
    the tile batches through the backend alone), so a slow default shows itself in every bench."""
    info = model.backend.info
    if getattr(info, "device", "cpu") not in ("cpu", None):
        return {"note": f"not measured: the peak is measured on the CPU, and this run used {info.device}"}
    prec = "bf16" if "bf16" in info.precision else "int8" if "int8" in info.precision else "f32"
    name = f"{info.name}_{prec}"
    batch = int(result["batch"])
    seconds = result["raw_seconds"] * batch / max(1, int(result["tiles"]))  # one full batch
    shape = _random_batch(model, dict(zip(model.in_layout.tiled, result["tile"])), batch).shape
    notes: dict[str, str] = {}
    roof = roofline_rows(path, shape, {name: seconds}, notes, model.card.output.axes)
    if not roof:
        return {"note": notes.get("roofline", "not measured")}
    row = roof["engines"][name]
    return {"engine": name, "gflops": row["roofline_gflops"], "fraction_of_peak": row["roofline_fraction_of_peak"],
            "peak_gflops": row["roofline_peak_gflops"], "flops_per_voxel": roof["flops"]["flops_per_voxel"],
            "peak_how": roof["peaks"].get(prec, {}).get("how")}


def roofline_rows(path: str | Path, batch_shape: tuple[int, ...], seconds: dict[str, float],
                  notes: dict[str, str] | None = None, output_axes: str | None = None) -> dict[str, Any]:
    """GFLOP/s and fraction of the measured peak of each timed engine (name ending in its precision:
    ``*_fp32``/``*_f32``, ``*_bf16``, ``*_int8``) on one batch of ``batch_shape``. Needs OpenVINO (it counts
    the FLOPs and measures the peak); without it the note says so and no column is added."""
    from scopert.runtime.tools.roofline import achieved, count_flops, measure_peak

    notes = notes if notes is not None else {}
    try:
        count = count_flops(path, tuple(batch_shape), output_axes)
        precisions = {"bf16" if n.endswith("bf16") else "int8" if n.endswith("int8") else "f32" for n in seconds}
        peaks = {p: measure_peak(p) for p in sorted(precisions) if p != "int8"}  # int8: no bf16/f32 MatMul ceiling
    except ScopertError as exc:
        notes["roofline"] = f"not measured: {exc}"
        return {}
    engines = {}
    for name, sec in seconds.items():
        prec = "bf16" if name.endswith("bf16") else "int8" if name.endswith("int8") else "f32"
        engines[name] = {f"roofline_{k}": v for k, v in achieved(count, sec, peaks.get(prec)).items()}
    return {"flops": count.as_dict(), "peaks": {p: peak.as_dict() for p, peak in peaks.items()}, "engines": engines}
