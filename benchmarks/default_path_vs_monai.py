"""Each seed family's default path against MONAI driving the same ONNX, side by side in one process (issue 24).

For each family imported from its seed repository's checkpoint format (``tests/families.py``), on a real image:
``load(m.onnx, precision="auto", calibration=...)`` then ``predict(x)`` with every default, as ``scopert apply``
runs it (tile from ``tile_cost``, measured backend, precision ``auto``: on a bf16 CPU the bf16 gate is measured on
the input's own tiles and bf16 runs where it passed), the same defaults forced to f32, the same with the tile the
runtime used before (the card's training patch raised to 4x the halo + the divisor), and MONAI's
``sliding_window_inference`` (roi 32x128x128 in 3D, 256x256 in 2D, overlap 0.25, gaussian) driving an ONNX
Runtime session of the same file on the same normalized input (CNNT: the time window as MONAI's first spatial
axis, transposed into the graph's b,t,c,y,x; blind-spot: each output frame's window of frames as channels); best
of ``REPEATS``, alternated (at seed size each contender drops its engine's memory after its run and the next
run compiles again, so no two hold a seed-size U-Net's gigabytes at once). Reports the tile, engine and
precision the defaults chose (with the gate's PSNR), the seconds, the ratios, and the max difference to MONAI
over the output range. Writes
``benchmarks/results/default_path_vs_monai.{json,md}``.

``--seed-size`` builds each family at its seed's default network size (``tests/families.SEED_SIZES``: 3D-RCAN's
config.json, the shipped pytorch-3dunet checkpoint, CNNT's, the blind-spot's and TA-GAN's CLI defaults), the
networks users bring: compute-bound, where engine and precision matter, unlike the small test networks (4-8
channels, memory-bound); the movie is cropped to 16x212x320 there. Writes
``benchmarks/results/default_path_vs_monai_seed_size.{json,md}``.

Run: ``.venv/bin/python benchmarks/default_path_vs_monai.py [--seed-size] [--families rcan,unet]``
(needs ``pip install monai``)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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


def images(seed_size: bool = False) -> dict[str, np.ndarray]:
    with h5py.File(DATA / "ovule_3d_seg" / "pytorch3dunet_sample_patch.h5", "r") as f:
        ovule = f["raw"][:]  # 64 x 200 x 200
    w2s = tifffile.imread(DATA / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")[0]  # 512 x 512
    movie = tifffile.imread(DATA / "trackpy_bulk_water" / "bulk_water_first40.tif")[:16]  # 16 x 424 x 640
    if seed_size:  # a quarter of each frame: the seed-size CNNT and blind-spot nets take minutes per movie
        movie = movie[:, :212, :320]
    return {"ovule": ovule, "w2s": w2s, "movie": np.ascontiguousarray(movie)}


CASES = [("rcan", "ovule"), ("unet", "ovule"), ("rcan2d", "w2s"), ("tagan", "w2s"), ("cnnt", "movie"),
         ("blindspot", "movie")]


def monai_runner(model, open_session, x, norm, fresh: bool = False):
    """MONAI's sliding window over the normalized input, each window run by ONNX Runtime on the same file
    (``fresh``: a session opened per run and dropped after it, so it holds no memory while the others run)."""
    import torch
    from monai.inferers import sliding_window_inference

    held = {"session": None if fresh else open_session()}

    def ort(t):
        held["session"] = held["session"] or open_session()
        session = held["session"]
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: t.numpy()})[0])

    def released(run):
        def go():
            try:
                return run()
            finally:
                if fresh:
                    held["session"] = None
        return go

    card = model.card
    tiled = model.in_layout.tiled.replace("t", "")  # MONAI's roi over space; CNNT's time window is added below
    roi = (32, 128, 128) if len(tiled) == 3 else (256, 256)
    roi = tuple(max(r, 4 * card.halo.get(a, 0) + card.input.divisor.get(a, 1)) for r, a in zip(roi, tiled))
    roi = tuple(-(-r // card.input.divisor.get(a, 1)) * card.input.divisor.get(a, 1) for r, a in zip(roi, tiled))

    if model.family_kind == "window":  # blind-spot: the window of frames is the graph's channel axis
        size = card.input.time_window

        def run():
            outs = []
            for i in range(len(x)):
                window = torch.from_numpy(model._normalize_frames(x[model.frame_window(len(x), i)])[None])
                outs.append(sliding_window_inference(window, roi, 1, ort, overlap=0.25, mode="gaussian")[0, 0])
            return np.stack([o.numpy() for o in outs])
        return released(run), roi + (size,)
    if "t" in card.input.axes:  # CNNT: b,t,c,y,x; MONAI tiles (t, y, x) with t one window
        roi3 = (card.input.time_window,) + roi

        def run():
            inp = torch.from_numpy(norm(x.astype(np.float32))[None, None])
            return sliding_window_inference(inp, roi3, 1, lambda t: ort(t.permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4),
                                            overlap=0.25, mode="gaussian")[0, 0].numpy()
        return released(run), roi3

    def run():
        inp = torch.from_numpy(norm(x.astype(np.float32))[None, None])
        return sliding_window_inference(inp, roi, 1, ort, overlap=0.25, mode="gaussian")[0].numpy()
    return released(run), roi


def old_tile(model) -> dict[str, int]:
    """The default before issue 24: the card's training tile (or 32/256), at least 4x the halo + the divisor."""
    from scopert.runtime.tile_cost import nominal_tile

    return {ax: nominal_tile(model.card, ax) for ax in model.in_layout.tiled}


def merged(path: Path, rows: list[dict]) -> list[dict]:
    """This run's rows with the recorded rows of families it did not run (``--families``), in ``CASES`` order."""
    try:
        kept = {r["family"]: r for r in json.loads(path.read_text())["rows"]}
    except (OSError, ValueError, KeyError):
        kept = {}
    kept.update({r["family"]: r for r in rows})
    return [kept[f] for f, _ in CASES if f in kept]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed-size", action="store_true", help="each family at its seed's default network size")
    parser.add_argument("--families", default=",".join(f for f, _ in CASES))
    args = parser.parse_args()
    import onnxruntime as ort

    from scopert.runtime import load
    from scopert.runtime.apply import calibration_sample
    from scopert.runtime.layout import centre_frame_model
    from scopert.runtime.normalize import fit_normalization
    from tests.families import exported

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="vs_monai_"))
    data = images(args.seed_size)
    rows = []
    out = OUT.with_name(OUT.name + "_seed_size") if args.seed_size else OUT
    for family, image in [c for c in CASES if c[0] in args.families.split(",")]:
        path = exported(family, work, seed_size=args.seed_size)
        x = data[image]
        model = load(path, precision="auto", calibration=calibration_sample(x))  # as `scopert apply` does
        f32 = load(path, precision="f32")
        model.family_kind = "window" if centre_frame_model(model.card) else "array"
        shape = x.shape[1:] if model.family_kind == "window" else x.shape
        tile, why = model.tile_choice(dict(zip(model.in_layout.tiled, shape)))
        before = old_tile(model)
        norm = fit_normalization(x, model.card.normalization)
        monai_run, roi = monai_runner(
            model, lambda: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), x, norm,
            fresh=args.seed_size)
        axes = "tyx" if x is data["movie"] else None

        def predict(m, **kw):
            try:
                return m.predict(x, axes=axes, **kw)
            finally:
                if args.seed_size and m.backend.info.name == "openvino":  # each contender holds its memory
                    m.backend.close()  # only while it runs: OpenVINO drops its compiled shapes and compiles again

        runs = {"default": lambda: predict(model), "f32": lambda: predict(f32),
                "before": lambda: predict(model, tile=before), "monai": monai_run}
        if args.seed_size:  # the training-patch tile of a seed-size net runs for many minutes; measured on the small
            del runs["before"]  # nets above, where it already lost 1.5-52x
        times, outs = {key: float("inf") for key in runs}, {}
        for _ in range(REPEATS):
            for key, run in runs.items():
                t0 = time.perf_counter()
                outs[key] = run()
                times[key] = min(times[key], time.perf_counter() - t0)
                print(f"{family} {key}: {time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)
        ref = outs["monai"].reshape(outs["default"].shape)
        span = float(ref.max() - ref.min()) or 1.0
        gate = model.precision_decision
        row = {"family": family, "image": image, "shape": list(x.shape), "default_tile": list(tile.values()),
               "tile_why": why, "tile_before": list(before.values()), "backend": model.backend.info.name,
               "precision": model.backend.info.precision, "precision_why": gate.reason, "monai_roi": list(roi),
               "default_s": round(times["default"], 3), "f32_s": round(times["f32"], 3),
               "before_s": round(times.get("before", np.nan), 3), "monai_ort_s": round(times["monai"], 3),
               "x_monai": round(times["monai"] / times["default"], 2),
               "x_monai_f32": round(times["monai"] / times["f32"], 2),
               "x_before": round(times.get("before", np.nan) / times["default"], 2),
               "max_diff_vs_monai_over_range": round(float(np.abs(outs["default"] - ref).max()) / span, 4)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    rows = merged(out.with_suffix(".json"), rows)
    out.with_suffix(".json").write_text(json.dumps({"seed_size": args.seed_size, "rows": rows}, indent=1))
    lines = ["| family | image | default tile | engine, precision | default s | f32 default s | before (tile) s | "
             "MONAI+ORT (roi) s | x MONAI | x MONAI (f32) | x before | max diff vs MONAI / range |",
             "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['family']} | {r['image']} {'x'.join(map(str, r['shape']))} | "
                     f"{'x'.join(map(str, r['default_tile']))} | {r['backend']}, {r['precision']} | {r['default_s']} | "
                     f"{r['f32_s']} | {r['before_s']} ({'x'.join(map(str, r['tile_before']))}) | {r['monai_ort_s']} "
                     f"({'x'.join(map(str, r['monai_roi']))}) | {r['x_monai']} | {r['x_monai_f32']} | "
                     f"{r['x_before']} | {r['max_diff_vs_monai_over_range']} |")
    lines += ["", "Precision the defaults chose, and why:", ""]
    lines += [f"- {r['family']}: {r['precision']}: {r['precision_why']}" for r in rows]
    size = "each seed's default network size" if args.seed_size else "the small imported test networks (4-8 channels)"
    out.with_suffix(".md").write_text(f"Networks: {size}; {os.cpu_count()} CPU threads.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
