"""Pipeline efficiency on this CPU: the whole tiled pipeline against the raw backend on the same tiles.

Setting (issue: runtime spine): a 3D conv model of 4 layers x 16 channels, a 64x512x512 uint16 volume,
32x128x128 tiles, halo 8, crop stitching; the raw figure runs the same tile batches through ONNX Runtime
alone. Both are measured side by side and alternated. Prints the ratio and writes JSON to
benchmarks/results/pipeline_efficiency.json.

    python benchmarks/pipeline_efficiency.py [--repeats 2] [--shape 64,512,512]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scopert.card import Normalization  # noqa: E402
from scopert.runtime import load  # noqa: E402
from scopert.runtime.bench import bench_pipeline  # noqa: E402
from tests.runtime.graphs import conv_stack  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--shape", default="64,512,512")
    ap.add_argument("--tile", default="32,128,128")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    tile = tuple(int(v) for v in args.tile.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conv3d_4x16.onnx"
        conv_stack(path, ndim=3, layers=4, channels=16, halo=8,
                   normalization=Normalization(kind="percentile", pmin=1.0, pmax=99.8))
        model = load(path, backend="ort", device="cpu")
        result = bench_pipeline(model, shape, tile, batch=args.batch, stitch="crop", repeats=args.repeats)
    result["cpu"] = platform.processor() or platform.machine()
    for key, value in result.items():
        print(f"{key:>28}: {value}")
    out = REPO / "benchmarks" / "results" / "pipeline_efficiency.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"pipeline efficiency = {result['pipeline_efficiency']:.3f} (raw {result['raw_seconds']} s, "
          f"pipeline {result['pipeline_seconds']} s); written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
