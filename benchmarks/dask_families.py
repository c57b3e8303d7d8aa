"""Seed families on Dask vs one machine, side by side in one process, on a real volume (issue 24).

For each family (imported from a checkpoint in its seed repository's format, as ``tests/families.py`` does), on
the ovule volume (pytorch-3dunet's sample, 64x200x200; RCAN 3D, U-Net 3D with GroupNorm) or the ISBI EM stack
(30x256x256 planes; RCAN 2D over z) with the default stitching (blend: these models are tile-variant) and the
default blocks: the single-machine ``apply`` to OME-Zarr (ONNX Runtime, 2 threads) and ``--cluster local:2``
(2 workers x 1 thread, the same 2 cores), the max difference over the output range, the tiles run per tile
planned (redundant fraction: 0 by construction for blend), and the overhead ratio single seconds / cluster
seconds (1.0 = no overhead on the same cores). Crop rows show the redundant fraction of blocks that cut tiles. Writes ``benchmarks/results/dask_families.{json,md}``.

Run: ``.venv/bin/python benchmarks/dask_families.py``
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
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "dask_families"

# family, image, tile, --block (the default block, 64 x 512 x 512 in whole tiles, holds these volumes whole)
CASES = [("rcan", "ovule.tif", (16, 64, 64), (32, 100, 100)), ("unet", "ovule.tif", (64, 128, 128), (32, 100, 100)),
         ("rcan2d", "em.tif", (96, 96), (8, 256, 256))]


def main() -> None:
    import distributed

    from scopert.runtime import load
    from scopert.runtime.apply import ApplyOptions, apply_file, plan_apply
    from scopert.scaleout.volume import plan_volume, run_volume
    from tests.families import exported

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="dask_families_"))
    with h5py.File(DATA / "ovule_3d_seg" / "pytorch3dunet_sample_patch.h5", "r") as f:
        tifffile.imwrite(work / "ovule.tif", f["raw"][:], imagej=True, metadata={"axes": "ZYX"})
    em = tifffile.imread(DATA / "isbi2012_em" / "isbi2012_train_volume.tif")[:, :256, :256]
    tifffile.imwrite(work / "em.tif", em, imagej=True, metadata={"axes": "ZYX"})
    rows = []
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with distributed.Client(cluster) as client:
        for family, image, tile, block in CASES:
            path = exported(family, work / "models")
            for stitch in ("auto", "crop"):
                opts = ApplyOptions(tile=tile, stitch=stitch)
                model = load(path, backend="ort", threads=2)
                single = work / f"{family}_{stitch}_single.zarr"
                t0 = time.perf_counter()
                apply_file(model, work / image, single, opts=opts)
                t_single = time.perf_counter() - t0
                dist = work / f"{family}_{stitch}_dist.zarr"
                t0 = time.perf_counter()
                with plan_apply(model, work / image, dist, None, opts) as job:
                    plan = plan_volume(job, None, False, backend="ort")
                    if stitch == "crop":  # the block rounded to whole crop steps (cores), so no tile runs twice
                        steps = [p.tiles[1].start - p.tiles[0].start if len(p.tiles) > 1 else p.size
                                 for p in plan.grid.plan.plans]
                        block = tuple(max(1, round(b / s)) * s for b, s in zip(block, steps[-len(block):]))
                    plan = plan_volume(job, block, False, backend="ort")
                result = run_volume(plan, client)
                t_dist = time.perf_counter() - t0
                a = zarr.open_array(str(single / "0"), mode="r")[:]
                b = zarr.open_array(str(dist / "0"), mode="r")[:]
                span = float(a.max() - a.min()) or 1.0
                row = {"family": family, "image": image, "shape": list(a.shape), "stitch": plan.grid.plan.mode,
                       "tile": list(plan.grid.plan.tile_shape), "tiles": plan.grid.plan.n_tiles,
                       "block": list(plan.grid.block), "blocks": plan.grid.n_blocks,
                       "redundant_fraction": round(plan.grid.redundant_fraction(), 4),
                       "single_s": round(t_single, 2), "local2_s": round(t_dist, 2),
                       "overhead_ratio": round(t_single / t_dist, 3),
                       "max_diff_over_range": float(np.abs(a.astype(np.float64) - b).max() / span),
                       "worker_compute_s": round(result.stats.compute_seconds, 2)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    cluster.close()
    OUT.with_suffix(".json").write_text(json.dumps({"cpu_threads": 2, "rows": rows}, indent=1))
    lines = ["| family | stitch | volume | tile | tiles | block | blocks | redundant | single s | local:2 s | "
             "ratio | max diff / range |", "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['family']} | {r['stitch']} | {'x'.join(map(str, r['shape']))} | "
                     f"{'x'.join(map(str, r['tile']))} | {r['tiles']} | {'x'.join(map(str, r['block']))} | "
                     f"{r['blocks']} | {r['redundant_fraction']:.1%} | {r['single_s']} | {r['local2_s']} | "
                     f"{r['overhead_ratio']} | {r['max_diff_over_range']:.1e} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
