"""CPU engines side by side: torch eager FP32, ORT FP32, OpenVINO f32 and OpenVINO bf16 (issue 7).

Workloads (random weights; accuracy reported against torch FP32): every landed family at its default
size - rcan in 3D on a 1x1x16x128x128 tile, unet (UNet3D, GroupNorm, f_maps 16, 4 levels) on 1x1x32x128x128,
blindspot (SHINE 3x3, 3 frames) on 512x512, tagan (ResNet-9 generator) on 256x256, cnnt (16 frames) on 128x128 -
and a CARE-like 2D U-Net on 1x1x1024x1024. Engines alternate within each repeat, in a rotating order (min of
repeats), so the ratios hold on a loaded machine.
Then a tile/batch sweep of OpenVINO f32 on the 2D model with the tile an auto-tuner would pick (fastest
Mvox/s), the raw-backend vs ``predict`` (pipeline) efficiency, and end to end ``predict`` with OpenVINO
against MONAI ``sliding_window_inference`` (torch FP32) at the same tile and overlap on a 3D volume.
Writes benchmarks/results/cpu_engines.{md,json,png} with the CPU model and flags.

    python benchmarks/cpu_engines.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
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

import torch  # noqa: E402
from torch import nn  # noqa: E402

from scopert.card import ModelCard, Normalization, TensorSpec  # noqa: E402
from scopert.runtime import load  # noqa: E402
from scopert.runtime.backends.openvino import OpenVinoBackend  # noqa: E402
from scopert.runtime.backends.ort import OrtBackend  # noqa: E402
from scopert.runtime.tools.bench import bench_pipeline, tune_tile  # noqa: E402
from scopert.runtime.cpu import cpu_caps  # noqa: E402
from scopert.runtime.compare import psnr_db  # noqa: E402
from scopert.runtime.tools.roofline import achieved, best_peak, count_flops, formula_peak, measure_peak  # noqa: E402

THREADS = os.cpu_count() or 1


class Care2D(nn.Module):
    """CSBDeep-like 2D U-Net: depth 2, base 32, two conv+ReLU per level, maxpool, nearest up, concat, residual."""

    def __init__(self, base: int = 32) -> None:
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.Conv2d(o, o, 3, padding=1), nn.ReLU())
        self.e0, self.e1, self.mid = block(1, base), block(base, 2 * base), block(2 * base, 4 * base)
        self.d1, self.d0 = block(6 * base, 2 * base), block(3 * base, base)
        self.out = nn.Conv2d(base, 1, 1)

    def forward(self, x):
        a = self.e0(x)
        b = self.e1(nn.functional.max_pool2d(a, 2))
        c = self.mid(nn.functional.max_pool2d(b, 2))
        d = self.d1(torch.cat([b, nn.functional.interpolate(c, scale_factor=2.0)], 1))
        e = self.d0(torch.cat([a, nn.functional.interpolate(d, scale_factor=2.0)], 1))
        return x + self.out(e)


def build_models() -> dict[str, dict]:
    from scopert.training.rcan.model import build_model as build_rcan
    from scopert.training.rcan.model import default_model_config
    from scopert.training.unet.model import build_model as build_unet
    from scopert.training.unet.model import export_module as unet_export
    from scopert.training.common.registry import get_family

    torch.manual_seed(0)
    rcan = build_rcan(default_model_config(3)).eval()
    ucfg = {"name": "UNet3D", "in_channels": 1, "out_channels": 1, "f_maps": 16, "num_groups": 8, "num_levels": 4,
            "final_sigmoid": False, "is_segmentation": False}
    unet = unet_export(build_unet(ucfg), ucfg).eval()

    def family_module(name: str, cfg: dict):
        fam = get_family(name)
        model = fam.build_model(cfg)
        return (fam.export_module(model, cfg) if fam.export_module else model).float().eval()

    return {
        "rcan3d": {"module": rcan, "tile": (1, 1, 16, 128, 128), "axes": "bczyx", "halo": 8, "divisor": 1},
        # halo 0: the MONAI comparison then runs exactly MONAI's windows (same tile, same overlap)
        "unet3d_gn": {"module": unet, "tile": (1, 1, 32, 128, 128), "axes": "bczyx", "halo": 0, "divisor": 8},
        "blindspot2d": {"module": family_module("blindspot", {"name": "3x3_blind", "frame_num": 3}),
                        "tile": (1, 3, 512, 512), "axes": "btyx", "halo": 16, "divisor": 64, "time_window": 3},
        "tagan2d": {"module": family_module("tagan", {}), "tile": (1, 1, 256, 256), "axes": "bcyx", "halo": 32,
                    "divisor": 4},
        "cnnt2dt": {"module": family_module("cnnt", {}), "tile": (1, 16, 1, 128, 128), "axes": "btcyx", "halo": 16,
                    "divisor": 4, "time_window": 16},
        "care2d": {"module": Care2D().eval(), "tile": (1, 1, 1024, 1024), "axes": "bcyx", "halo": 16, "divisor": 4},
    }


def export(spec: dict, path: Path) -> None:
    import onnx

    axes = spec["axes"]
    x = torch.zeros(spec["tile"])
    names = {0: "b"} | {i + 2: f"s{i}" for i in range(len(spec["tile"]) - 2)}
    torch.onnx.export(spec["module"], x, str(path), input_names=["input"], output_names=["output"], opset_version=17,
                      dynamic_axes={"input": names, "output": names}, dynamo=False)
    spatial = axes[-3:] if "z" in axes else axes[-2:]
    window = spec.get("time_window")
    card = ModelCard(family="bench", name=path.stem,
                     input=TensorSpec("input", axes, divisor={a: spec["divisor"] for a in spatial}
                                      if spec["divisor"] > 1 else {}, time_window=window),
                     output=TensorSpec("output", axes if not window or "c" in axes else "bcyx"),
                     halo={a: spec["halo"] for a in spatial},
                     default_tile=dict(zip(spatial, spec["tile"][-len(spatial):])),
                     tile_invariant=False, normalization=Normalization(kind="percentile", pmin=1.0, pmax=99.8))
    card.validate()
    proto = onnx.load(str(path))
    card.embed(proto)
    onnx.save(proto, str(path))


def micro_tile(shape, seed=0) -> np.ndarray:
    """A microscopy-like tile: Gaussian blobs, background, Poisson and read noise, percentile-normalized."""
    rng = np.random.default_rng(seed)
    spatial = tuple(n for n in shape[2:] if n > 1)  # a singleton channel axis (btcyx) is broadcast
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in spatial], indexing="ij")
    img = np.full(spatial, 5.0, np.float32)
    for _ in range(40):
        c = [rng.uniform(0, n) for n in spatial]
        r2 = sum((g - ci) ** 2 for g, ci in zip(grids, c))
        img += rng.uniform(20, 80) * np.exp(-r2 / (2 * rng.uniform(2, 6) ** 2))
    img = rng.poisson(img * 50 / img.max() * 10).astype(np.float32) + rng.normal(0, 2, img.shape).astype(np.float32)
    lo, hi = np.percentile(img, [1, 99.8])
    img = (img - lo) / (hi - lo)
    return np.broadcast_to(img, shape).astype(np.float32).copy()


def time_min(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def engines_side_by_side(name: str, spec: dict, path: Path, repeats: int, bf16_ok: bool,
                         peaks: dict | None = None) -> dict:
    x = micro_tile(spec["tile"])
    xt = torch.from_numpy(x)
    torch.set_num_threads(THREADS)
    with torch.inference_mode():
        ref = spec["module"](xt).numpy()
    runners = {"torch_fp32": lambda: spec["module"](xt).numpy()}
    ort_b = OrtBackend(path, device="cpu", threads=THREADS)
    ov_b = OpenVinoBackend(path, threads=THREADS, precision="f32")
    runners["ort_fp32"] = lambda: ort_b.run(x)
    runners["openvino_f32"] = lambda: ov_b.run(x)
    # --backend auto --precision f32: the measured choice (its first load times both engines on this tile)
    auto_model = load(path, backend="auto", precision="f32", threads=THREADS)
    runners["auto_f32"] = lambda: auto_model.backend.run(x)
    notes = {}
    if bf16_ok:
        ovb = OpenVinoBackend(path, threads=THREADS, precision="bf16")
        runners["openvino_bf16"] = lambda: ovb.run(x)
    else:
        notes["openvino_bf16"] = "not measured: this CPU has no bf16 (OpenVINO would run f32)"
    outs = {}
    times = {k: float("inf") for k in runners}
    with torch.inference_mode():
        for k, fn in runners.items():  # warm-up (compile, allocations)
            outs[k] = fn()
        names = list(runners)
        for r in range(repeats):  # the order rotates: no engine always runs right after torch's OpenMP threads
            for k in names[r % len(names):] + names[:r % len(names)]:
                time.sleep(0.2)
                t0 = time.perf_counter()
                runners[k]()
                times[k] = min(times[k], time.perf_counter() - t0)
    vox = float(np.prod(spec["tile"]))
    row = {"tile": list(spec["tile"]), "engines": {}, "notes": notes}
    for k in runners:
        row["engines"][k] = {"seconds": round(times[k], 4), "mvox_s": round(vox / times[k] / 1e6, 3),
                             "x_torch": round(times["torch_fp32"] / times[k], 3),
                             "psnr_vs_torch_fp32_db": None if k == "torch_fp32" else round(psnr_db(ref, outs[k]), 1)}
    row["openvino_f32_x_ort"] = round(times["ort_fp32"] / times["openvino_f32"], 3)
    best_single = min(times["ort_fp32"], times["openvino_f32"])
    picked = auto_model.backend.info.name
    # the pick's quality: its engine's time here vs the best (same instances, alternating: the fair ratio), and
    # the auto-loaded instance's own time (a second instance of that engine: the same code, its own noise)
    row["auto"] = {"picked": picked, "reason": auto_model.backend.info.reason,
                   "pick_x_best_single_f32": round(best_single / times[f"{picked}_fp32" if picked == "ort"
                                                                      else f"{picked}_f32"], 3),
                   "x_best_single_f32": round(best_single / times["auto_f32"], 3)}
    # roofline (issue 16): counted FLOPs of this tile, achieved GFLOP/s and fraction of the measured peak
    window = spec.get("time_window")
    count = count_flops(path, tuple(spec["tile"]), spec["axes"] if not window or "c" in spec["axes"] else "bcyx")
    row["flops_per_voxel"] = round(count.flops_per_voxel)
    for k, v in row["engines"].items():
        v.update(achieved(count, times[k], (peaks or {}).get("bf16" if k.endswith("bf16") else "f32")))
    print(f"{name}: " + ", ".join(f"{k} {v['seconds']:.3f}s ({v['x_torch']:.2f}x)" for k, v in row["engines"].items()),
          flush=True)
    return row


def sweep_2d(path: Path, repeats: int, quick: bool) -> dict:
    """``tune_tile`` (the auto-tuner of ``scopert bench --tune``) on the 2D model with OpenVINO f32, for a
    2048x2048 image: every tile/batch row and the pick (most output voxels per second after the halo)."""
    model = load(path, backend="openvino")
    scales = (1.0, 2.0) if quick else (0.5, 1.0, 2.0, 4.0)
    result = tune_tile(model, {"y": 2048, "x": 2048}, scales=scales, repeats=repeats)
    for r in result["rows"]:
        print(f"sweep 2D tile {r['tile']} batch {r['batch']}: {r['core_voxels_per_s'] / 1e6:.3f} Mvox/s (core)",
              flush=True)
    return result


def apply_vs_monai(spec: dict, path: Path, repeats: int, quick: bool) -> dict:
    """``predict`` (OpenVINO, blend) against MONAI sliding_window_inference (torch FP32), same tile and overlap."""
    from monai.inferers import sliding_window_inference

    shape = (32, 256, 256) if quick else (64, 256, 256)
    tile, overlap = spec["tile"][2:], 0.25
    vol = (micro_tile((1, 1) + shape)[0, 0] * 1000 + 200).astype(np.uint16)
    model = load(path, backend="openvino")
    ov_overlap = tuple(int(round(t * overlap)) for t in tile)
    norm = model.prepare(vol)[2]
    xt = torch.from_numpy(norm(vol.astype(np.float32))[None, None])
    with torch.inference_mode():
        ref = sliding_window_inference(xt, tile, 1, spec["module"], overlap=overlap, mode="gaussian").numpy()[0, 0]
    ours = model.predict(vol, tile=tile, overlap=ov_overlap, stitch="blend")
    t_ours, t_monai = float("inf"), float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict(vol, tile=tile, overlap=ov_overlap, stitch="blend")
        t_ours = min(t_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            sliding_window_inference(xt, tile, 1, spec["module"], overlap=overlap, mode="gaussian")
        t_monai = min(t_monai, time.perf_counter() - t0)
    eff = bench_pipeline(model, shape, tile, batch=1, stitch="crop", repeats=repeats, volume=vol)
    return {"volume": list(shape), "tile": list(tile), "overlap": overlap, "scopert_openvino_s": round(t_ours, 3),
            "monai_torch_s": round(t_monai, 3), "x_monai": round(t_monai / t_ours, 3),
            "psnr_vs_monai_db": round(psnr_db(ref, ours), 1), "pipeline_efficiency_crop": eff["pipeline_efficiency"], "raw_s": eff["raw_seconds"],
            "pipeline_s": eff["pipeline_seconds"]}


def write_results(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cpu_engines.json").write_text(json.dumps(result, indent=2))
    lines = [f"# CPU engines ({result['date']})", "", f"CPU: {result['cpu']['model']}, {result['cpu']['threads']} threads; "
             f"bf16: {result['cpu']['bf16']}; load average at start {result['loadavg_start']} (machine shared, noisy).",
             f"Flags (vector): {result['cpu']['vector_flags']}", "",
             "Peaks (OpenVINO 1024^3 and 2048^3 MatMul, same machine and threads; best reading before and after "
             "the workloads): " + ", ".join(
                 f"{p} {v['gflops']} GFLOP/s (readings {result.get('peak_readings', {}).get(p)})"
                 for p, v in result.get("peaks", {}).items()),
             "On paper: " + ", ".join(f"{k} {v}" for k, v in result.get("formula_peak", {}).items()), "",
             "| workload | engine | s (min) | Mvox/s | x torch FP32 | PSNR vs torch FP32 dB | MFLOP/voxel | GFLOP/s | "
             "fraction of peak |", "|---|---|---|---|---|---|---|---|---|"]
    for w, row in result["workloads"].items():
        for k, v in row["engines"].items():
            lines.append(f"| {w} {row['tile']} | {k} | {v['seconds']} | {v['mvox_s']} | {v['x_torch']} | "
                         f"{v['psnr_vs_torch_fp32_db'] if v['psnr_vs_torch_fp32_db'] is not None else 'ref'} | "
                         f"{row.get('flops_per_voxel', 0) / 1e6:.3f} | {v.get('gflops')} | {v.get('fraction_of_peak')} |")
        for k, note in row["notes"].items():
            lines.append(f"| {w} | {k} | – | – | – | {note} | | | |")
    lines += ["", "## --backend auto (measured choice, f32) against the best single f32 backend", "",
              "| workload | picked | picked engine x best single f32 | auto-loaded instance x best single f32 |",
              "|---|---|---|---|"]
    lines += [f"| {w} | {row['auto']['picked']} | {row['auto'].get('pick_x_best_single_f32')} | "
              f"{row['auto']['x_best_single_f32']} |" for w, row in result["workloads"].items() if "auto" in row]
    sw = result["sweep_2d"]
    if sw:
        lines += ["", "## Tile/batch sweep (OpenVINO f32, 2D model, 2048x2048 image; `scopert bench --tune`)", "",
                  "| tile (with halo) | batch | s per batch | output Mvox/s after the halo |", "|---|---|---|---|"]
        lines += [f"| {r['tile']} | {r['batch']} | {r['seconds']} | {r['core_voxels_per_s'] / 1e6:.3f} |"
                  for r in sw["rows"]]
        lines += ["", f"Auto-tuner pick: tile {sw['pick']['tile']}, batch {sw['pick']['batch']}."]
    if result.get("apply_vs_monai"):
        a = result["apply_vs_monai"]
        lines += ["", "## End to end: predict (OpenVINO f32, blend) vs MONAI sliding_window_inference (torch FP32)", "",
                  f"volume {a['volume']}, tile {a['tile']}, overlap {a['overlap']}: ScopeRT {a['scopert_openvino_s']} s, "
                  f"MONAI {a['monai_torch_s']} s -> {a['x_monai']}x MONAI; PSNR vs MONAI {a['psnr_vs_monai_db']} dB. "
                  f"Pipeline efficiency (crop, same tiles): {a['pipeline_efficiency_crop']} "
                  f"(raw {a['raw_s']} s, pipeline {a['pipeline_s']} s)."]
    (out_dir / "cpu_engines.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        names = list(result["workloads"])
        engines = ["torch_fp32", "ort_fp32", "openvino_f32", "openvino_bf16"]
        for i, e in enumerate(engines):
            vals = [result["workloads"][n]["engines"].get(e, {}).get("x_torch", 0) for n in names]
            ax.bar(np.arange(len(names)) + i * 0.2, vals, 0.2, label=e)
        ax.set_xticks(np.arange(len(names)) + 0.3, names)
        ax.set_ylabel("speed-up vs torch eager FP32")
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_title(f"{result['cpu']['model']}, {result['cpu']['threads']} threads (loaded machine)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "cpu_engines.png", dpi=100)
    except ImportError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="Smaller sweep and volume.")
    ap.add_argument("--only", help="Comma-separated workloads (rcan3d, unet3d_gn, blindspot2d, tagan2d, cnnt2dt, care2d).")
    ap.add_argument("--no-monai", action="store_true")
    ap.add_argument("--no-sweep", action="store_true", help="Skip the 2D tile/batch sweep.")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"),
                    help="Folder for cpu_engines.{md,json,png} (a subset run should not overwrite the full one).")
    args = ap.parse_args()
    caps = cpu_caps()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_start": list(os.getloadavg()),
              "cpu": {"model": caps.model, "threads": THREADS, "bf16": caps.bf16_evidence,
                      "vector_flags": " ".join(sorted(f for f in caps.flags if f.startswith(("avx", "amx", "fma")))),
                      "machine": platform.machine()},
              "versions": {"torch": torch.__version__}, "workloads": {}}
    import onnxruntime
    import openvino
    result["versions"].update(onnxruntime=onnxruntime.__version__, openvino=openvino.get_version())
    precisions = ("f32", "bf16") if caps.bf16 else ("f32",)
    peaks = {p: measure_peak(p) for p in precisions}  # read again after the workloads; the best reading counts
    result["formula_peak"] = formula_peak(caps.flags)
    specs = build_models()
    if args.only:
        specs = {k: v for k, v in specs.items() if k in args.only.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, spec in specs.items():
            paths[name] = Path(tmp) / f"{name}.onnx"
            export(spec, paths[name])
            result["workloads"][name] = engines_side_by_side(name, spec, paths[name], args.repeats, caps.bf16, peaks)
        if "care2d" in paths and not args.no_sweep:
            result["sweep_2d"] = sweep_2d(paths["care2d"], args.repeats, args.quick)
        else:
            result["sweep_2d"] = {}
        monai = importlib.util.find_spec("monai") is not None
        if not monai and not args.no_monai:
            print("MONAI is not installed: the end-to-end comparison is skipped (pip install monai)", flush=True)
        if monai and not args.no_monai and "unet3d_gn" in paths:
            result["apply_vs_monai"] = apply_vs_monai(specs["unet3d_gn"], paths["unet3d_gn"], max(1, args.repeats - 1),
                                                      args.quick)
            print("apply vs MONAI:", result["apply_vs_monai"], flush=True)
    after = {p: measure_peak(p) for p in precisions}
    result["peak_readings"] = {p: [peaks[p].as_dict()["gflops"], after[p].as_dict()["gflops"]] for p in precisions}
    best = {p: best_peak(peaks[p], after[p]) for p in precisions}
    result["peaks"] = {p: v.as_dict() for p, v in best.items()}
    for row in result["workloads"].values():  # fractions against the best reading of the whole run
        for k, v in row["engines"].items():
            peak = best.get("bf16" if k.endswith("bf16") else "f32")
            if peak and v.get("gflops") is not None:
                v.update(fraction_of_peak=round(v["gflops"] / peak.gflops, 3), peak_gflops=round(peak.gflops, 1))
    result["loadavg_end"] = list(os.getloadavg())
    write_results(result, Path(args.results))
    print((Path(args.results) / "cpu_engines.md").read_text())


if __name__ == "__main__":
    main()
