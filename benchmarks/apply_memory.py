"""Peak memory of `scopert apply` on a 1 GB uint16 TIFF, beyond the model.

Writes a ~1 GiB uint16 volume (default 128x2048x2048) as an uncompressed TIFF, slab by slab, then runs
`scopert apply` in a child process with a small 3D conv model (halo 2) and 16-bit output. The child's peak RSS
(ru_maxrss) is compared with the peak RSS of a child that only loads the same model and runs one tile, so
the difference is what the volume costs. The target is < 1 GB.

    python benchmarks/apply_memory.py [--shape 128,2048,2048] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scopert.card import Normalization  # noqa: E402
from scopert.runtime.io.tiff import TiffStreamWriter  # noqa: E402
from tests.runtime.graphs import conv_stack  # noqa: E402

BASELINE = """
import sys, numpy as np
from scopert.runtime import load
m = load(sys.argv[1])
m.predict(np.random.default_rng(0).integers(0, 4000, (32, 256, 256)).astype(np.uint16), tile=(32, 256, 256))
"""


def child_peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` and return (its peak RSS in MB, seconds)."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: exec the command so ru_maxrss is the command's own
        os.execvp(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return usage.ru_maxrss / 1024.0, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="128,2048,2048")
    ap.add_argument("--keep", help="Folder for the files (default: a temporary folder, removed afterwards).")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model, src, dst = work / "conv3d.onnx", work / "big.tif", work / "big_restored.tif"
        conv_stack(model, ndim=3, layers=2, channels=4,
                   normalization=Normalization(kind="percentile", pmin=1.0, pmax=99.8))
        rng = np.random.default_rng(0)
        with TiffStreamWriter(src, shape, np.uint16, "zyx", fmt="imagej") as writer:
            for z in range(0, shape[0], 8):
                writer.write(rng.integers(100, 4000, (min(8, shape[0] - z),) + shape[1:], dtype=np.uint16))
        size_gb = src.stat().st_size / 1e9
        base_mb, _ = child_peak_rss_mb([sys.executable, "-c", BASELINE, str(model)])
        apply_mb, seconds = child_peak_rss_mb([sys.executable, "-m", "scopert", "apply", "-m", str(model), "-i",
                                               str(src), "-o", str(dst), "-b", "16", "-B", "16,256,256"])
        result = {"input_gb": round(size_gb, 3), "shape": list(shape), "output_gb": round(dst.stat().st_size / 1e9, 3),
                  "peak_rss_apply_mb": round(apply_mb), "peak_rss_model_only_mb": round(base_mb),
                  "beyond_model_mb": round(apply_mb - base_mb), "seconds": round(seconds, 1)}
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    out = REPO / "benchmarks" / "results" / "apply_memory.json"
    out.write_text(json.dumps(result, indent=2))
    verdict = "below" if result["beyond_model_mb"] < 1000 else "ABOVE"
    print(f"apply on a {size_gb:.2f} GB uint16 TIFF: peak RSS {apply_mb:.0f} MB, {result['beyond_model_mb']} MB beyond "
          f"the model ({verdict} the 1 GB target)")


if __name__ == "__main__":
    main()
