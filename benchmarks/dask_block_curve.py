"""Per-block cost on Dask and the block-size curve (issue 24), side by side in one process on a real volume.

An imported 3D-RCAN (``tests/families.py``) restores the ovule volume (pytorch-3dunet's sample, 64x200x200) with
a fixed tile grid (16x64x64, so every block size below cuts the same global tiles) and blocks from one tile to
the whole volume, crop and blend, on ``local:1`` (one worker, one thread: per-block cost is not hidden by
parallelism) and ``local:2``. For each block size: the blocks, the summed worker seconds, the wall seconds, and
the single-machine seconds of the same plan on one thread. The per-block cost is fitted as the slope of the
summed worker seconds over the number of blocks (least squares; the tiles computed are the same at every block
size, so what grows with the block count is what each block costs on top of its tiles: task dispatch, model
and input lookup in the worker cache, reading its input slab, the OME-Zarr region write and its fsync, the ledger
mark, and for blend the partial-sum files and the rim pass). Reports it as a fraction of one block's compute at
each size. Writes ``benchmarks/results/dask_block_curve.{json,md}``.

Run: ``.venv/bin/python benchmarks/dask_block_curve.py``
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "dask_block_curve"
TILE = (16, 64, 64)
BLOCKS = [(16, 64, 64), (16, 128, 128), (32, 128, 128), (32, 200, 200), (64, 200, 200)]


def main() -> None:
    import distributed

    from scopert.runtime import load
    from scopert.runtime.apply import ApplyOptions, apply_file, plan_apply
    from scopert.scaleout.volume import plan_volume, run_volume
    from tests.families import exported

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="dask_block_curve_"))
    with h5py.File(DATA / "ovule_3d_seg" / "pytorch3dunet_sample_patch.h5", "r") as f:
        tifffile.imwrite(work / "ovule.tif", f["raw"][:], imagej=True, metadata={"axes": "ZYX"})
    path = exported("rcan", work / "models")
    rows = []
    for workers in (1, 2):
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        with distributed.Client(cluster) as client:
            for stitch in ("crop", "blend"):
                opts = ApplyOptions(tile=TILE, stitch=stitch)
                model = load(path, backend="ort", threads=1)
                t0 = time.perf_counter()
                apply_file(model, work / "ovule.tif", work / f"single_{stitch}.zarr", opts=opts)
                single = time.perf_counter() - t0
                for block in BLOCKS:
                    dist = work / f"d{workers}_{stitch}_{'x'.join(map(str, block))}.zarr"
                    t0 = time.perf_counter()
                    with plan_apply(model, work / "ovule.tif", dist, None, opts) as job:
                        steps = [p.tiles[1].start - p.tiles[0].start if len(p.tiles) > 1 else p.size
                                 for p in plan_volume(job, None, False, backend="ort").grid.plan.plans]
                        # crop: whole tile cores (a block boundary inside a core runs that tile twice)
                        block = tuple(min(n, max(1, round(b / s)) * s) for b, s, n in
                                      zip(block, steps, job.plan_shape if hasattr(job, "plan_shape") else (64, 200, 200)))
                        plan = plan_volume(job, block, False, backend="ort")
                    result = run_volume(plan, client)
                    wall = time.perf_counter() - t0
                    row = {"workers": workers, "stitch": stitch, "block": list(plan.grid.block),
                           "blocks": plan.grid.n_blocks, "tiles": plan.grid.plan.n_tiles,
                           "redundant_fraction": round(plan.grid.redundant_fraction(), 4),
                           "worker_s": round(result.stats.compute_seconds, 3), "wall_s": round(wall, 3),
                           "single_s": round(single, 3), "ratio": round(single / wall, 3)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        cluster.close()
    fits = {}
    for stitch in ("crop", "blend"):
        pts = [(r["blocks"], r["worker_s"]) for r in rows if r["workers"] == 1 and r["stitch"] == stitch
               and r["redundant_fraction"] == 0]
        n, s = np.array(pts, float).T
        slope, intercept = np.polyfit(n, s, 1)
        fits[stitch] = {"per_block_s": round(float(slope), 4), "tiles_s": round(float(intercept), 3),
                        "points": len(pts)}
        for r in rows:
            if r["stitch"] == stitch:
                per_block_compute = max(intercept, 1e-9) / r["blocks"]
                r["per_block_cost_fraction"] = round(float(slope) / per_block_compute, 3)
    OUT.with_suffix(".json").write_text(json.dumps({"tile": TILE, "fits": fits, "rows": rows}, indent=1))
    lines = [f"Tile {'x'.join(map(str, TILE))} on the ovule volume 64x200x200 (imported 3D-RCAN, ONNX Runtime, 1 thread "
             "per worker). Per-block cost fitted on local:1 (summed worker seconds = per-block x blocks + tiles): "
             + "; ".join(f"{k}: {v['per_block_s'] * 1000:.0f} ms per block, tiles {v['tiles_s']} s"
                         for k, v in fits.items()), "",
             "| workers | stitch | block | blocks | redundant | worker s | wall s | single s | single/wall | "
             "per-block cost / block compute |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['stitch']} | {'x'.join(map(str, r['block']))} | {r['blocks']} | "
                     f"{r['redundant_fraction']:.1%} | {r['worker_s']} | {r['wall_s']} | {r['single_s']} | "
                     f"{r['ratio']} | {r['per_block_cost_fraction']:.1%} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
