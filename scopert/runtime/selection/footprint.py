"""The memory a batch of tiles takes in the engine that runs it, measured, for the default tile's budget.

The graph's estimate (its largest activation x ``tile_cost.LIVE_BUFFERS``) misses both ways: on the seed-size
networks OpenVINO f32 peaked at 0.6x of it for the U-Net and 1.4x for the 3D-RCAN, ONNX Runtime at 1.3x and
2.7x. So where the estimate is what bounds the default tile (``TileChoice.bound``), the engine is run in a
fresh process on two tile sizes, and its peak resident memory (Linux ``VmHWM``) gives a fixed part and a part
per voxel. A fresh process, because an engine that has run keeps its buffers and a freed heap hides new ones.

The result is cached in ``engines/footprint.json`` beside the model, keyed by the file's sha256, the engine, the
precision, the thread count and the engine versions. Where nothing can be measured (no ``/proc``, a child that
fails) the estimate stays. Imports numpy and the standard library; the engine only in the child process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_NAME = "footprint.json"
CHILD_TIMEOUT_S = 600


@dataclass(frozen=True)
class Footprint:
    """Bytes one batch of ``voxels`` takes: ``fixed_bytes + bytes_per_voxel * voxels``."""

    fixed_bytes: int
    bytes_per_voxel: int
    basis: str  # "measured on openvino bf16"

    def bytes_for(self, voxels: int) -> int:
        return self.fixed_bytes + self.bytes_per_voxel * voxels


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def fit(points: list[tuple[int, int]]) -> tuple[int, int]:
    """(fixed bytes, bytes per voxel) through two (voxels, peak bytes) points; one point, or a slope lost in noise
    (the larger tile no dearer), charges the larger tile's whole peak per voxel instead."""
    (va, pa), (vb, pb) = sorted(points)[0], sorted(points)[-1]
    slope = (pb - pa) / (vb - va) if vb > va else 0.0
    if slope <= 0:
        return 0, math.ceil(pb / vb)
    return max(0, int(pa - slope * va)), math.ceil(slope)


def cache_key(sha256: str, engine: str, precision: str, threads: int, versions: dict[str, str]) -> str:
    return "|".join([sha256, engine, precision, str(threads)] + [f"{k}={v}" for k, v in sorted(versions.items())])


def measured_footprint(path: Path, engine: str, precision: str, tiles: list[tuple[tuple[int, ...], int]],
                       threads: int, sha256: str, versions: dict[str, str], cache: Path) -> Footprint | None:
    """The cached footprint of ``path`` on ``engine`` at ``precision``, or one measured now on ``tiles`` ((batch
    shape in the model's layout, tile voxels), two where the graph lets a tile grow) and recorded; None where it
    cannot be measured."""
    from scopert.runtime.selection.measured import read_cache, write_cache

    key = cache_key(sha256, engine, precision, threads, versions)
    basis = f"measured on {engine} {precision}"
    records = read_cache(cache)
    if key in records:
        rec = records[key]
        return Footprint(int(rec["fixed_bytes"]), int(rec["bytes_per_voxel"]), basis + " (cached)")
    points = []
    for shape, voxels in tiles:
        peak = peak_in_child(path, engine, precision, shape, threads)
        if peak is None:
            return None
        points.append((voxels, peak))
    fixed, per_voxel = fit(points)
    log.info("memory footprint of %s on %s %s: %.0f MiB + %d B per voxel (peaks %s)", path.name, engine, precision,
             fixed / 2**20, per_voxel, ", ".join(f"{p / 2**20:.0f} MiB at {v} voxels" for v, p in points))
    records[key] = {"fixed_bytes": fixed, "bytes_per_voxel": per_voxel, "points": points, "engine": engine,
                    "precision": precision, "threads": threads, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        write_cache(cache, records)
    except OSError as exc:
        log.warning("could not record the memory footprint in %s: %s", cache, exc)
    return Footprint(fixed, per_voxel, basis)


def peak_in_child(path: Path, engine: str, precision: str, shape: tuple[int, ...], threads: int) -> int | None:
    """Peak resident bytes a fresh process adds to open ``path`` on ``engine`` and run one batch of ``shape``."""
    if not Path("/proc/self/status").exists():
        return None
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "scopert.runtime.selection.footprint", str(path), engine, precision,
           ",".join(map(str, shape)), str(threads)]
    stderr = ""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env)
        stderr = done.stderr.strip()
        return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError, KeyError) as exc:
        why = stderr.splitlines()[-1] if stderr else str(exc)
        log.info("memory footprint of %s on %s not measured (%s); the graph's estimate stays", path.name, engine,
                 why[:200])
        return None


def _child(argv: list[str]) -> None:
    """Open the model on the engine, run one batch of random values, print the peak memory this added."""
    from scopert.runtime.backends.base import REGISTRY

    path, engine, precision, shape, threads = argv
    before = _status_kib("VmRSS") * 1024
    entry = REGISTRY[engine]
    extra = {"precision": precision} if len(entry.precisions) > 1 else {}
    backend = entry.load_opener()(Path(path), device="cpu", threads=int(threads), **extra)
    batch = np.random.default_rng(0).uniform(0, 1, tuple(int(n) for n in shape.split(","))).astype(np.float32)
    backend.run(batch)
    print(json.dumps({"peak_bytes": _status_kib("VmHWM") * 1024 - before}))


if __name__ == "__main__":
    _child(sys.argv[1:])
