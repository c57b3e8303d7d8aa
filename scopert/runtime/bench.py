"""Throughput of the raw backend on tile batches against the whole pipeline on a volume.

Both figures run the same tile batches, measured side by side in one process and alternated, so the
ratio (the pipeline efficiency) is robust to a noisy machine. Imports numpy and the runtime only.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from scopert.runtime.model import Model, tile_input
from scopert.runtime.stitch import SlabSink


class _NullSink:
    def write(self, slab: np.ndarray, start: int) -> None:
        pass


def synthetic_volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A uint16 volume of Poisson counts over smooth structure, like a fluorescence acquisition."""
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
