"""Pipeline efficiency on this CPU: the whole tiled pipeline against the raw backend on the same tiles.

Setting (issue: runtime spine): a 3D conv model of 4 layers x 16 channels, a 64x512x512 uint16 volume,
32x128x128 tiles, halo 8, crop stitching; the raw figure runs the same tile batches through the backend
alone. Both are measured side by side and alternated. ``--apply`` adds the file-to-file figure (issue 7):
``apply`` reads the volume from a TIFF and writes the restored one (raw and restored channels, 32-bit),
timed in the same process right after. Prints the ratios and writes JSON to benchmarks/results/pipeline_efficiency[_BACKEND].json.

    python benchmarks/pipeline_efficiency.py [--repeats 2] [--shape 64,512,512] [--backend openvino --apply]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scopert.card import Normalization  # noqa: E402
from scopert.runtime import load  # noqa: E402
from scopert.runtime.apply import ApplyOptions, apply_file  # noqa: E402
from scopert.runtime.tools.bench import bench_pipeline, synthetic_volume  # noqa: E402
from tests.runtime.graphs import conv_stack  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--shape", default="64,512,512")
    ap.add_argument("--tile", default="32,128,128")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--backend", default="ort", choices=("ort", "openvino"))
    ap.add_argument("--apply", action="store_true", help="Also time `apply` file to file on the same tiles.")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    tile = tuple(int(v) for v in args.tile.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conv3d_4x16.onnx"
        conv_stack(path, ndim=3, layers=4, channels=16, halo=8,
                   normalization=Normalization(kind="percentile", pmin=1.0, pmax=99.8))
        model = load(path, backend=args.backend, device="cpu")
        volume = synthetic_volume(shape)
        result = bench_pipeline(model, shape, tile, batch=args.batch, stitch="crop", repeats=args.repeats,
                                volume=volume)
        if args.apply:
            src, dst = Path(tmp) / "in.tif", Path(tmp) / "out.tif"
            tifffile.imwrite(src, volume, imagej=True)
            opts = ApplyOptions(tile=tile, stitch="crop", batch=args.batch)
            times = []
            for _ in range(args.repeats):
                dst.unlink(missing_ok=True)
                t0 = time.perf_counter()
                apply_file(model, src, dst, opts=opts)
                times.append(time.perf_counter() - t0)
            result["apply_seconds"] = round(min(times), 3)
            result["apply_efficiency"] = round(result["raw_seconds"] / min(times), 3)
    result["cpu"] = platform.processor() or platform.machine()
    for key, value in result.items():
        print(f"{key:>28}: {value}")
    suffix = "" if args.backend == "ort" else f"_{args.backend}"
    out = REPO / "benchmarks" / "results" / f"pipeline_efficiency{suffix}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"pipeline efficiency = {result['pipeline_efficiency']:.3f} (raw {result['raw_seconds']} s, "
          f"pipeline {result['pipeline_seconds']} s)" + (f"; apply (TIFF to TIFF) efficiency "
          f"{result['apply_efficiency']:.3f} ({result['apply_seconds']} s)" if args.apply else "")
          + f"; written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
