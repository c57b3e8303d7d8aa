"""Each seed family's default path against MONAI driving the same ONNX, side by side in one process (issue 24).

For each family imported from its seed repository's checkpoint format (``tests/families.py``), on a real image:
``load(m.onnx).predict(x)`` with every default (tile from ``tile_cost``, backend, precision ``auto``), the same
with the tile the runtime used before (the card's training patch raised to 4x the halo + the divisor), and
MONAI's ``sliding_window_inference`` (roi 32x128x128 in 3D, 256x256 in 2D, overlap 0.25, gaussian) driving an
ONNX Runtime session of the same file on the same normalized input; best of ``REPEATS``, alternated. Reports
the tile and engine the defaults chose, the seconds, the ratios, and the max difference to MONAI over the output
range. Writes ``benchmarks/results/default_path_vs_monai.{json,md}``.

Run: ``.venv/bin/python benchmarks/default_path_vs_monai.py``  (needs ``pip install monai``)
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
OUT = ROOT / "benchmarks" / "results" / "default_path_vs_monai"
REPEATS = 2


def images() -> dict[str, np.ndarray]:
    with h5py.File(DATA / "ovule_3d_seg" / "pytorch3dunet_sample_patch.h5", "r") as f:
        ovule = f["raw"][:]  # 64 x 200 x 200
    w2s = tifffile.imread(DATA / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")[0]  # 512 x 512
    return {"ovule": ovule, "w2s": w2s}


CASES = [("rcan", "ovule"), ("unet", "ovule"), ("rcan2d", "w2s"), ("tagan", "w2s")]


def old_tile(model) -> dict[str, int]:
    """The default before issue 24: the card's training tile (or 32/256), at least 4x the halo + the divisor."""
    from scopert.runtime.tile_cost import nominal_tile

    return {ax: nominal_tile(model.card, ax) for ax in model.in_layout.tiled}


def main() -> None:
    import onnxruntime as ort
    import torch
    from monai.inferers import sliding_window_inference

    from scopert.runtime import load
    from scopert.runtime.normalize import fit_normalization
    from tests.families import exported

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="vs_monai_"))
    data = images()
    rows = []
    for family, image in CASES:
        path = exported(family, work)
        x = data[image]
        model = load(path, precision="auto")
        tile, why = model.tile_choice(dict(zip(model.in_layout.tiled, x.shape)))
        before = old_tile(model)
        norm = fit_normalization(x, model.card.normalization)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        roi = (32, 128, 128) if x.ndim == 3 else (256, 256)
        roi = tuple(max(r, 4 * model.card.halo.get(a, 0) + model.card.input.divisor.get(a, 1))
                    for r, a in zip(roi, model.in_layout.tiled))
        roi = tuple(-(-r // model.card.input.divisor.get(a, 1)) * model.card.input.divisor.get(a, 1)
                    for r, a in zip(roi, model.in_layout.tiled))

        def monai_run():
            inp = torch.from_numpy(norm(x.astype(np.float32))[None, None])
            return sliding_window_inference(inp, roi, 1, lambda t: torch.from_numpy(
                session.run(None, {name: t.numpy()})[0]), overlap=0.25, mode="gaussian")[0].numpy()

        times = {"default": float("inf"), "before": float("inf"), "monai": float("inf")}
        outs = {}
        for _ in range(REPEATS):
            for key, run in (("default", lambda: model.predict(x)), ("before", lambda: model.predict(x, tile=before)),
                             ("monai", monai_run)):
                t0 = time.perf_counter()
                outs[key] = run()
                times[key] = min(times[key], time.perf_counter() - t0)
        ref = outs["monai"].reshape(outs["default"].shape)
        span = float(ref.max() - ref.min()) or 1.0
        row = {"family": family, "image": image, "shape": list(x.shape), "default_tile": list(tile.values()),
               "tile_why": why, "tile_before": list(before.values()), "backend": model.backend.info.name,
               "precision": model.backend.info.precision, "monai_roi": list(roi),
               "default_s": round(times["default"], 3), "before_s": round(times["before"], 3),
               "monai_ort_s": round(times["monai"], 3),
               "x_monai": round(times["monai"] / times["default"], 2),
               "x_before": round(times["before"] / times["default"], 2),
               "max_diff_vs_monai_over_range": round(float(np.abs(outs["default"] - ref).max()) / span, 4)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    OUT.with_suffix(".json").write_text(json.dumps({"rows": rows}, indent=1))
    lines = ["| family | image | default tile | engine, precision | default s | before (tile) s | MONAI+ORT (roi) s | "
             "x MONAI | x before | max diff vs MONAI / range |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['family']} | {r['image']} {'x'.join(map(str, r['shape']))} | "
                     f"{'x'.join(map(str, r['default_tile']))} | {r['backend']}, {r['precision']} | {r['default_s']} | "
                     f"{r['before_s']} ({'x'.join(map(str, r['tile_before']))}) | {r['monai_ort_s']} "
                     f"({'x'.join(map(str, r['monai_roi']))}) | {r['x_monai']} | {r['x_before']} | "
                     f"{r['max_diff_vs_monai_over_range']} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
