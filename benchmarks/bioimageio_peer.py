"""Peer benchmark: ScopeRT ``predict`` against bioimageio.core's blockwise ``predict`` on the same zoo-format model
and the same large real image, with the same block size, side by side in one process.

The model is a bioimage.io package (format 0.5, ONNX weights) that ``scopert package`` writes for a 2D RCAN;
ScopeRT runs the ONNX that ``scopert import bioimageio`` makes of that package. The image is the real 16-bit
Convallaria frame mirrored into a mosaic of about 2000x2000 (at most 4.0 M pixels, so both sides compute exact
percentiles), cut to whole block cores so that both tools place identical blocks.
bioimageio.core runs ONNX Runtime on the CPU with its prediction pipeline created once (model loading not
timed); ScopeRT runs ONNX Runtime and OpenVINO with the model loaded once. Timings alternate, best of
``--repeats``. Writes benchmarks/results/bioimageio_peer.json.

    python benchmarks/bioimageio_peer.py [--repeats 3] [--block 256] [--package PATH.zip]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("SCOPERT_SHARED", REPO.parent / "shared")) / "data"
RCAN2D = {"ndim": 2, "num_channels": 16, "num_residual_groups": 2, "num_residual_blocks": 2, "channel_reduction": 4,
          "input_shape": [128, 128]}


def make_package(folder: Path) -> Path:
    """A 2D RCAN with random weights, exported and packaged the way a user would (scopert export + package)."""
    from scopert.export import export_run
    from scopert.export.bioimageio.package import PackageOptions, package_model
    from tests.export.test_onnx_export import make_run

    info = make_run(folder / "run", "rcan", RCAN2D, seed=0)
    export_run(info.folder, folder / "rcan2d.onnx")
    res = package_model(folder / "rcan2d.onnx", folder / "rcan2d.zip",
                        DATA / "convallaria_pn2v" / "convallaria_pn2v_frame0000.tif",
                        PackageOptions(name="ScopeRT RCAN 2D peer benchmark"))
    return res.path


def large_image(size: int) -> np.ndarray:
    import tifffile

    frame = tifffile.imread(DATA / "convallaria_pn2v" / "convallaria_pn2v_frame0000.tif")
    mosaic = np.block([[frame, frame[:, ::-1]], [frame[::-1], frame[::-1, ::-1]]])
    return np.ascontiguousarray(mosaic[:size, :size])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--package", type=Path, help="An existing ScopeRT-written package (default: build one).")
    args = ap.parse_args()

    import bioimageio.core
    import onnxruntime
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import AxisId, TensorId

    from scopert.export.bioimageio.importer import import_package
    from scopert.runtime import load

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        package = args.package or make_package(folder)
        imported = import_package(package, folder / "imported.onnx")
        core = args.block - 2 * imported.card.halo["y"]  # whole block cores: both tools place identical blocks
        image = large_image(core * (2000 // core))
        block = {"y": args.block, "x": args.block}

        descr = load_description(package)
        pipeline = create_prediction_pipeline(descr)
        tid = TensorId(str(descr.inputs[0].id))

        def run_core() -> np.ndarray:
            sample = Sample(members={tid: Tensor.from_numpy(image[None, None].astype(np.float32),
                                                             dims=("batch", "channel", "y", "x"))}, stat={}, id="peer")
            out = pipeline.predict_sample_with_fixed_blocking(sample, {tid: {AxisId(a): s for a, s in block.items()}})
            return next(iter(out.members.values())).data.to_numpy()[0, 0]

        engines = {name: load(folder / "imported.onnx", backend=name) for name in ("ort", "openvino")}
        times: dict[str, list[float]] = {"bioimageio_core_ort": [], **{f"scopert_{k}": [] for k in engines}}
        outputs: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            t = time.perf_counter()
            outputs["bioimageio_core_ort"] = run_core()
            times["bioimageio_core_ort"].append(time.perf_counter() - t)
            for name, model in engines.items():
                t = time.perf_counter()
                outputs[f"scopert_{name}"] = model.predict(image, tile=(args.block, args.block), stitch="crop")
                times[f"scopert_{name}"].append(time.perf_counter() - t)
        pipeline.unload()

    ref = outputs["bioimageio_core_ort"].astype(np.float64)
    best = {k: min(v) for k, v in times.items()}
    result = {
        "model": "RCAN 2D " + json.dumps(RCAN2D), "package": "scopert package (bioimage.io 0.5, ONNX weights)",
        "image": f"Convallaria PN2V frame mirrored to {image.shape[0]}x{image.shape[1]} uint16",
        "block": [args.block, args.block], "halo": imported.card.halo, "stitch": "crop (both)",
        "repeats": args.repeats, "seconds_best": {k: round(v, 3) for k, v in best.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "speedup_vs_bioimageio_core": {k: round(best["bioimageio_core_ort"] / v, 2)
                                       for k, v in best.items() if k.startswith("scopert")},
        "max_abs_vs_bioimageio_core": {k: float(np.max(np.abs(v - ref))) for k, v in outputs.items()
                                       if k.startswith("scopert")},
        "relative_vs_bioimageio_core": {k: float(np.max(np.abs(v - ref)) / np.max(np.abs(ref)))
                                        for k, v in outputs.items() if k.startswith("scopert")},
        "versions": {"bioimageio.core": bioimageio.core.__version__, "onnxruntime": onnxruntime.__version__},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared)",
    }
    out = REPO / "benchmarks" / "results" / "bioimageio_peer.json"
    out.write_text(json.dumps(result, indent=2))
    for k, v in best.items():
        extra = "" if k.startswith("bio") else (f"  {result['speedup_vs_bioimageio_core'][k]}x, rel diff "
                                                f"{result['relative_vs_bioimageio_core'][k]:.1e}")
        print(f"{k:>22}: {v:.2f} s{extra}")
    print(f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
