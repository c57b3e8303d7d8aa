"""INT8 on trained models, through the user's path (issue 16): train, `export --cpu-gates --int8` on held-out
real data, then time f32, bf16, INT8 and torch eager FP32 on one held-out tile.

- W2S RCAN 2D: the configuration of ``tests/training/test_w2s_rcan.py`` (9 noisy/clean pairs, 2.5 CPU
  minutes); gate: PSNR(INT8 vs f32) >= 40 dB on slices 9-11 (held out).
- ISBI UNet2D membranes: the configuration of ``tests/training/test_isbi_unet2d.py`` (24 slices, 3 CPU minutes);
  gate: Dice change of the 0.5-thresholded mask <= 0.01 on slices 24-29 (held out).

Writes benchmarks/results/int8_trained.{json,md}.

    python benchmarks/int8_trained.py [--minutes 2.5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tifffile  # noqa: E402
import torch  # noqa: E402

from scopert.export.int8 import record_cpu_gates  # noqa: E402
from scopert.export.onnx_export import export_run, read_card  # noqa: E402
from scopert.export.precision import load_calibration  # noqa: E402
from scopert.runtime.timing import time_engines  # noqa: E402
from scopert.runtime.backends.openvino import OpenVinoBackend  # noqa: E402
from scopert.runtime.cpu import cpu_caps  # noqa: E402
from scopert.runtime.compare import psnr_db  # noqa: E402
from scopert.training.common.runfolder import load_model  # noqa: E402
from tests.training.test_isbi_unet2d import N_TRAIN, load_isbi, write_isbi_config  # noqa: E402

DATA = Path(os.environ.get("SCOPERT_SHARED", REPO.parent / "shared")) / "data"


def train_w2s_rcan(work: Path, minutes: float) -> tuple[Path, Path]:
    """The W2S RCAN of the slow test; (run folder, held-out noisy slices file)."""
    from scopert.training.rcan.train import train_rcan_with_result

    noisy = tifffile.imread(DATA / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")
    clean = tifffile.imread(DATA / "w2s_8bit_pairs" / "w2s_avg400_clean.tif")
    for name, stack in (("raw", noisy), ("gt", clean)):
        (work / name).mkdir(parents=True)
        for i in range(9):
            tifffile.imwrite(work / name / f"slice{i:02d}.tif", stack[i])
    config = {"training_data_dir": {"raw": str(work / "raw"), "gt": str(work / "gt")}, "input_shape": [64, 64],
              "epochs": 1000, "steps_per_epoch": 50, "num_channels": 16, "num_residual_groups": 2,
              "num_residual_blocks": 2, "channel_reduction": 4, "batch_size": 8, "initial_learning_rate": 2e-3,
              "loss": "mse", "metrics": ["psnr"], "time_limit_minutes": minutes, "seed": 0}
    info, _ = train_rcan_with_result(config, work / "run", progress=False, device="cpu")
    held_out = work / "w2s_held_out.tif"
    tifffile.imwrite(held_out, noisy[9:12])
    return info.folder, held_out


def train_isbi_unet(work: Path, minutes: float) -> tuple[Path, Path]:
    """The ISBI UNet2D of the slow test; (run folder, held-out slices file)."""
    from scopert.training.unet.train import train_unet_with_result

    raw, membrane = load_isbi(DATA)
    cfg = write_isbi_config(raw, membrane, work, iters=10_000, time_limit=minutes)
    info, _ = train_unet_with_result(cfg, work / "run", progress=False)
    held_out = work / "isbi_held_out.tif"
    tifffile.imwrite(held_out, raw[N_TRAIN:])
    return info.folder, held_out


def measure(name: str, run_folder: Path, held_out: Path, work: Path, repeats: int, bf16: bool) -> dict:
    onnx_path = work / f"{name}.onnx"
    export_run(run_folder, onnx_path)
    t0 = time.perf_counter()
    gates = record_cpu_gates(onnx_path, [held_out], int8=True)  # = scopert export --cpu-gates --int8 --calib
    gate_s = time.perf_counter() - t0
    card = read_card(onnx_path)
    x = load_calibration(card, [held_out], tiles=1, tile={"y": 512, "x": 512})[:1]
    info, module = load_model(run_folder)
    module = module.float().eval()
    xt = torch.from_numpy(x)
    runners = {"torch_fp32": lambda: module(xt)}
    engines = {"openvino_f32": OpenVinoBackend(onnx_path, precision="f32"),
               "openvino_int8": OpenVinoBackend(onnx_path.with_name(gates["int8_gate"]["file"]), precision="f32")}
    if bf16:
        engines["openvino_bf16"] = OpenVinoBackend(onnx_path, precision="bf16")
    runners.update({k: (lambda b=b: b.run(x)) for k, b in engines.items()})
    with torch.inference_mode():
        best = time_engines(runners, repeats)  # warm-up, then alternating, best of each
    row = {"tile": list(x.shape), "bf16_gate": gates["bf16_gate"], "int8_gate": gates["int8_gate"],
           "gates_s": round(gate_s, 1), "seconds": {k: round(v, 4) for k, v in best.items()},
           "int8_x_torch": round(best["torch_fp32"] / best["openvino_int8"], 2),
           "int8_x_f32": round(best["openvino_f32"] / best["openvino_int8"], 2),
           "int8_psnr_vs_f32_tile_db": round(psnr_db(engines["openvino_f32"].run(x),
                                                     engines["openvino_int8"].run(x)), 1)}
    if bf16:
        row["int8_x_bf16"] = round(best["openvino_bf16"] / best["openvino_int8"], 2)
        row["bf16_x_torch"] = round(best["torch_fp32"] / best["openvino_bf16"], 2)
    for engine in engines.values():
        engine.close()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.5, help="training time per model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    caps = cpu_caps()
    threads = torch.get_num_threads()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": caps.key, "loadavg_start": list(os.getloadavg()),
              "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.set_num_threads(1)  # as the slow tests train: no OpenMP oversubscription on two cores
        trained = {"w2s_rcan2d": train_w2s_rcan(tmp / "w2s", args.minutes),
                   "isbi_unet2d": train_isbi_unet(tmp / "isbi", args.minutes)}
        torch.set_num_threads(threads)
        for name, (run_folder, held_out) in trained.items():
            row = measure(name, run_folder, held_out, tmp, args.repeats, caps.bf16)
            result["models"][name] = row
            print(name, json.dumps(row), flush=True)
    result["loadavg_end"] = list(os.getloadavg())
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "int8_trained.json").write_text(json.dumps(result, indent=2))
    lines = [f"# INT8 on trained models ({result['date']})", "", f"CPU: {caps.key}; load {result['loadavg_start']}.",
             "", "| model | tile | bf16 gate dB | INT8 gate | passed | INT8 x torch | INT8 x f32 | INT8 x bf16 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        g = r["int8_gate"]
        lines.append(f"| {name} | {r['tile']} | {r['bf16_gate'].get('psnr_db')} | {g['metric']} {g['value']} "
                     f"(threshold {g['threshold']}) | {g['passed']} | {r['int8_x_torch']} | {r['int8_x_f32']} | "
                     f"{r.get('int8_x_bf16', 'no bf16 on this CPU')} |")
    (args.results / "int8_trained.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
