"""Distributed `apply` on Dask: overhead against one machine, scheduler cost per block, client memory.

Four measurements, written to benchmarks/results/dist_apply.json (or dist_apply_ci.json with --ci):

1. overhead: single-machine `apply` (one process, 2 threads) against `--cluster local:2` (2 worker processes x
   1 thread: the same cores) on a real EM volume (ISBI 2012 ssTEM planes, repeated along z) with a 3D conv model.
   ratio = single time / cluster time: warm (model compiled in every process first) and cold (the cluster's
   start, imports and model loads included); also in CPU seconds of every process; outputs must agree (<= 1e-6).
2. scheduler cost: no-op tasks through the same bounded-window dispatch the blocks use; ms per task. From the
   blocks' measured compute per voxel: the smallest block whose scheduler cost is < 2% of its compute.
3. prediction (on paper): efficiency at 16 and 100 GPU workers, from the scheduler's serial cost per task, the
   halo re-computation of the block shape, and an assumed GPU throughput per worker (--gpu-mvox).
4. client memory: RSS of the client before and after a run of 1,000 blocks (--ci: 200).

    python benchmarks/dist_apply.py            # full: 150x512x512, 1,000 blocks (minutes on 2 cores)
    python benchmarks/dist_apply.py --ci       # small: 24x256x256, 200 blocks
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scopert.card import Normalization  # noqa: E402
from scopert.scaleout.cluster import open_client, parse_cluster  # noqa: E402
from tests.runtime.graphs import conv_stack  # noqa: E402

PERCENTILE = Normalization(kind="percentile", pmin=1.0, pmax=99.8)
DATA = Path(os.environ.get("SCOPERT_SHARED", REPO.parent / "shared")) / "data"


def em_volume(path: Path, shape: tuple[int, int, int]) -> None:
    """Real ssTEM planes (30 x 512 x 512), repeated along z to ``shape[0]`` and cropped to ``shape[1:]``."""
    import tifffile

    stack = tifffile.imread(DATA / "isbi2012_em" / "isbi2012_train_volume.tif")
    reps = -(-shape[0] // stack.shape[0])
    vol = np.concatenate([stack] * reps)[:shape[0], :shape[1], :shape[2]]
    tifffile.imwrite(path, np.ascontiguousarray(vol), photometric="minisblack")  # uncompressed: memory-mapped


def distributed_apply(model_path: Path, src: Path, dst: Path, client, block, opts) -> tuple[object, float]:
    from scopert.scaleout.volume import plan_volume, run_volume
    from scopert.runtime import load
    from scopert.runtime.apply import plan_apply

    t0 = time.perf_counter()
    with plan_apply(load(model_path, threads=1), src, dst, None, opts) as job:
        plan = plan_volume(job, block, False)
    return run_volume(plan, client), time.perf_counter() - t0


def read(path: Path) -> np.ndarray:
    import zarr

    return zarr.open_array(str(path / "0"), mode="r")[:]


def block_seconds(store: Path) -> tuple[float, int]:
    """Summed compute seconds of every block (from its ledger marker) and the number of blocks."""
    from scopert.scaleout.ledger import Ledger

    done = Ledger.of(store).done_dir
    infos = [json.loads(p.read_text()) for p in done.glob("*.json")]
    return sum(i["compute_s"] + i["write_s"] for i in infos), len(infos)


def noop(item, _arg=None) -> dict:
    return {"seconds": 0.0}


def measure_overhead(work: Path, shape, block, tile, layers, channels, repeats) -> dict:
    from scopert.runtime import load
    from scopert.runtime.apply import ApplyOptions, apply_file

    model_path, src = work / "bench3d.onnx", work / "vol.tif"
    conv_stack(model_path, ndim=3, layers=layers, channels=channels, normalization=PERCENTILE)
    em_volume(src, shape)
    warm_src = work / "warm.tif"
    em_volume(warm_src, (2 * tile[0], tile[1], tile[2]))
    warm_block = (tile[0], tile[1], tile[2])
    opts = ApplyOptions(tile=tile)
    singles, dists, runs, cpu_singles, cpu_dists = [], [], [], [], []
    for r in range(repeats):
        for p in work.glob("*.zarr"):
            shutil.rmtree(p)
        model = load(model_path, threads=2)
        apply_file(model, warm_src, work / "warm_single.zarr", opts=opts)  # compiled for the tile shape
        t0, c0 = time.perf_counter(), time.process_time()
        apply_file(model, src, work / "single.zarr", opts=opts)
        singles.append(time.perf_counter() - t0)
        cpu_singles.append(time.process_time() - c0)
        t0 = time.perf_counter()
        with open_client(parse_cluster("local:2")) as client:  # what --cluster local:2 starts
            # warm: every worker imports the runtime and compiles the model once (the cache keeps it)
            distributed_apply(model_path, warm_src, work / "warm_dist.zarr", client, warm_block, opts)
            c0, w0 = time.process_time(), client.run(time.process_time)
            result, run_s = distributed_apply(model_path, src, work / "dist.zarr", client, block, opts)
            w1 = client.run(time.process_time)
            cpu_dists.append(time.process_time() - c0 + sum(w1[k] - w0[k] for k in w1))
        dists.append(time.perf_counter() - t0)
        runs.append(run_s)
        print(f"repeat {r}: single {singles[-1]:.2f} s ({cpu_singles[-1]:.1f} CPU s), local:2 {dists[-1]:.2f} s "
              f"(run {run_s:.2f} s, {cpu_dists[-1]:.1f} CPU s, {result.n_blocks} blocks)", file=sys.stderr)
    diff = float(np.abs(read(work / "single.zarr") - read(work / "dist.zarr")).max())
    busy, n_blocks = block_seconds(work / "dist.zarr")
    best_single, best_dist, best_run = min(singles), min(dists), min(runs)
    grid_block = result.n_blocks
    return {
        "volume": list(shape), "model": f"3D conv stack, {layers} layers x {channels} channels (halo {layers})",
        "block": list(block), "tile": list(tile), "blocks": grid_block, "repeats": repeats,
        "single_s": singles, "cluster_total_s": dists, "cluster_run_s": runs,
        "ratio_with_cluster_start": best_single / best_dist, "ratio_warm_cluster": best_single / best_run,
        # CPU seconds (client, scheduler and workers together) against the single run's: what distributing costs,
        # whatever else the machine runs (wall-clock ratios on a shared 2-core machine measure the neighbours)
        "single_cpu_s": cpu_singles, "cluster_cpu_s": cpu_dists, "cpu_ratio": min(cpu_singles) / min(cpu_dists),
        "max_abs_diff": diff, "blocks_busy_s": busy, "voxels": int(np.prod(shape)),
        "worker_s_per_voxel": busy / float(np.prod(shape)),
    }


def measure_scheduler(n_tasks: int) -> dict:
    from scopert.scaleout.dispatch import dispatch

    with open_client(parse_cluster("local:2")) as client:
        dispatch(client, noop, range(50), (None,), window=16, what=str)  # warm up
        t0 = time.perf_counter()
        dispatch(client, noop, range(n_tasks), (None,), window=16, what=str)
        wall = time.perf_counter() - t0
    return {"noop_tasks": n_tasks, "wall_s": wall, "ms_per_task": 1000 * wall / n_tasks}


def measure_client_memory(work: Path, n_planes: int, side: int, block: int) -> dict:
    import psutil
    import tifffile

    from scopert.scaleout.volume import plan_volume, run_volume
    from scopert.runtime import load
    from scopert.runtime.apply import ApplyOptions, plan_apply

    model_path, src = work / "bench2d.onnx", work / "planes.tif"
    conv_stack(model_path, ndim=2, layers=2, channels=4, normalization=PERCENTILE)
    stack = tifffile.imread(DATA / "isbi2012_em" / "isbi2012_train_volume.tif")
    tifffile.imwrite(src, np.ascontiguousarray(stack[:n_planes, :side, :side]), photometric="minisblack")
    proc = psutil.Process()
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    with open_client(parse_cluster("local:2")) as client:
        model = load(model_path, threads=1)
        opts = ApplyOptions(tile=(32, 32))
        with plan_apply(model, src, work / "warm.zarr", None, opts) as job:  # warm: imports, plugin, caches
            run_volume(plan_volume(job, (1, side, side), False), client)
        with plan_apply(model, src, work / "many.zarr", None, opts) as job:
            plan = plan_volume(job, (1, block, block), False)
        before = proc.memory_info().rss
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        t0 = time.perf_counter()
        result = run_volume(plan, client)
        seconds = time.perf_counter() - t0
        stop.set()
        thread.join()
        after = proc.memory_info().rss
    return {"blocks": result.n_blocks, "seconds": seconds, "client_rss_before_mb": before / 2**20,
            "client_rss_after_mb": after / 2**20, "client_rss_peak_mb": peak[0] / 2**20,
            "growth_mb": (after - before) / 2**20, "peak_growth_mb": (peak[0] - before) / 2**20}


def predict(sched_ms: float, worker_overhead_ms: float, block: tuple[int, int, int], halo: int,
            gpu_mvox: float) -> dict:
    """Efficiency at W GPU workers (a prediction): the scheduler hands out one task per ``sched_ms`` (serial),
    each block costs its GPU compute plus ``worker_overhead_ms``, and a block computes its halo again."""
    core = math.prod(block)
    read = math.prod(b + 2 * halo for b in block)
    gpu_s = read / (gpu_mvox * 1e6)
    out = {"assumed_gpu_mvox_per_s": gpu_mvox, "block": list(block), "halo": halo,
           "block_gpu_s": gpu_s, "halo_efficiency": core / read}
    for workers in (16, 100):
        per_block = gpu_s + worker_overhead_ms / 1000
        feed = min(1.0, per_block / (workers * sched_ms / 1000))  # can the scheduler keep W workers busy?
        out[f"efficiency_{workers}_gpus"] = feed * (gpu_s / per_block) * core / read
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ci", action="store_true", help="Small sizes (CI): 24x256x256, 200 blocks.")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--gpu-mvox", type=float, default=100.0,
                    help="Assumed GPU throughput per worker for the prediction (Mvox/s).")
    ap.add_argument("--keep", help="Folder for the files (default: a temporary folder).")
    args = ap.parse_args()
    # The tile's core (tile - 2 x halo) divides both the volume and each block plus its halo, so the blocks compute
    # as many tiles as the single-machine run (see the README: choose --block as a multiple of the tile's core).
    if args.ci:
        shape, block, tile, planes, side, mem_block = (48, 256, 256), (24, 256, 256), (32, 136, 136), 8, 160, 32
    else:  # 1,000 blocks in the memory run: 10 planes x 10 x 10 blocks of 32 x 32
        shape, block, tile, planes, side, mem_block = (150, 512, 512), (75, 512, 512), (48, 264, 264), 10, 320, 32
    layers, channels = 4, 16  # ~15k multiply-adds per voxel: light next to RCAN or a 3D U-Net
    repeats = args.repeats or (1 if args.ci else 2)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        overhead = measure_overhead(work, shape, block, tile, layers, channels, repeats)
        sched = measure_scheduler(300 if args.ci else 2000)
        memory = measure_client_memory(work, planes, side, mem_block)
    s_per_voxel = overhead["worker_s_per_voxel"]
    min_voxels = sched["ms_per_task"] / 1000 / (0.02 * s_per_voxel)
    results = {
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "overhead": overhead,
        "scheduler": {**sched, "smallest_block_voxels_for_2pct": min_voxels,
                      "smallest_block_cube_side": round(min_voxels ** (1 / 3), 1)},
        "prediction": {
            "measured_scheduler": [predict(sched["ms_per_task"], sched["ms_per_task"], b, layers, args.gpu_mvox)
                                   for b in ((64, 512, 512), (128, 1024, 1024))],
            # dask's docs give 0.2-1 ms per task for a scheduler on its own core (this machine's is shared)
            "scheduler_1ms": [predict(1.0, 1.0, b, layers, args.gpu_mvox)
                              for b in ((64, 512, 512), (128, 1024, 1024))]},
        "client_memory": memory,
    }
    out = REPO / "benchmarks" / "results" / ("dist_apply_ci.json" if args.ci else "dist_apply.json")
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
