"""INT8 (OpenVINO NNCF) against f32 and bf16 for every family, on real tiles (issue 16).

Each family's model (random init, as in ``cpu_engines.py``; plus a segmentation U-Net with sigmoid output)
is exported to ONNX, quantized by ``scopert.export.int8.quantize_int8`` on real tiles from
../shared/data (half calibrate, all judge), and gated: PSNR(INT8 vs f32) >= 40 dB, or for the
segmentation net 1 - Dice(f32 mask, INT8 mask) <= 0.01. Speed: OpenVINO f32, bf16 (where the CPU has it),
INT8 and torch eager FP32 on one tile, alternating (min of --repeats). Writes benchmarks/results/int8_families.{json,md}.

    python benchmarks/int8_families.py [--only rcan3d,care2d] [--repeats 2]
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
sys.path.insert(0, str(REPO / "benchmarks"))

import tifffile  # noqa: E402
import torch  # noqa: E402

import cpu_engines as ce  # noqa: E402
from scopert.export.int8 import quantize_int8  # noqa: E402
from scopert.runtime.timing import time_engines  # noqa: E402
from scopert.runtime.backends.openvino import OpenVinoBackend  # noqa: E402
from scopert.runtime.cpu import cpu_caps  # noqa: E402
from scopert.runtime.compare import psnr_db  # noqa: E402

DATA = Path(os.environ.get("SCOPERT_SHARED", REPO.parent / "shared")) / "data"


def _norm(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = np.percentile(a, [1, 99.8])
    return (a - lo) / max(hi - lo, 1e-6)


def real_tiles(name: str, shape: tuple[int, ...], n: int = 4) -> np.ndarray:
    """``n`` real tiles of ``shape`` (model layout, batch 1 each) from the data set that fits the family."""
    rng = np.random.default_rng(0)
    if name in ("rcan3d", "unet3d_gn"):
        import h5py

        with h5py.File(DATA / "ovule_3d_seg" / "pytorch3dunet_sample_patch.h5") as f:
            vol = _norm(np.asarray(f["raw"]))
    elif name == "cnnt2dt" or name == "blindspot2d":
        vol = _norm(tifffile.imread(DATA / "trackpy_bulk_water" / "bulk_water_first40.tif"))
    elif name == "unet2d_seg":
        vol = _norm(tifffile.imread(DATA / "isbi2012_em" / "isbi2012_train_volume.tif"))
    else:
        vol = _norm(tifffile.imread(DATA / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif"))
    spatial = [s for s in shape[1:] if True]
    out = []
    for _ in range(n):
        if len(shape) == 5 and shape[2] == 1:  # btcyx: frames x 1 x y x
            t, y, x = shape[1], shape[3], shape[4]
            t0, y0, x0 = (rng.integers(0, vol.shape[i] - s + 1) for i, s in enumerate((t, y, x)))
            out.append(vol[t0:t0 + t, y0:y0 + y, x0:x0 + x][None, :, None])
        elif len(shape) == 5:  # bczyx
            z, y, x = shape[2:]
            z0, y0, x0 = (rng.integers(0, vol.shape[i] - s + 1) for i, s in enumerate((z, y, x)))
            out.append(vol[z0:z0 + z, y0:y0 + y, x0:x0 + x][None, None])
        else:  # bcyx or btyx (frames as channels)
            c, y, x = shape[1:]
            src = vol if vol.ndim == 3 else vol[None]
            k = rng.integers(0, src.shape[0] - c + 1)
            y0, x0 = rng.integers(0, src.shape[1] - y + 1), rng.integers(0, src.shape[2] - x + 1)
            out.append(src[k:k + c, y0:y0 + y, x0:x0 + x][None])
    del spatial
    return np.concatenate(out).astype(np.float32)


def segmentation_unet() -> dict:
    from scopert.training.unet.model import build_model

    cfg = {"name": "UNet2D", "in_channels": 1, "out_channels": 1, "f_maps": 16, "num_groups": 8, "num_levels": 3,
           "final_sigmoid": True, "is_segmentation": True}
    torch.manual_seed(0)
    from scopert.training.common.registry import get_family

    fam = get_family("unet")
    model = build_model(cfg)
    module = (fam.export_module(model, cfg) if fam.export_module else model).float().eval()
    return {"module": module, "tile": (1, 1, 256, 256), "axes": "bcyx", "halo": 0, "divisor": 4}


class _Card:
    def __init__(self, seg: bool) -> None:
        self.postprocess = {"segmentation": True, "threshold": 0.5} if seg else {}
        self.training_config = {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    caps = cpu_caps()
    specs = ce.build_models()
    specs["unet2d_seg"] = segmentation_unet()
    small = {"rcan3d": (1, 1, 8, 64, 64), "unet3d_gn": (1, 1, 16, 64, 64), "cnnt2dt": (1, 16, 1, 64, 64),
             "blindspot2d": (1, 3, 256, 256), "tagan2d": (1, 1, 256, 256), "care2d": (1, 1, 256, 256),
             "unet2d_seg": (1, 1, 256, 256)}
    if args.only:
        specs = {k: v for k, v in specs.items() if k in args.only.split(",")}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": caps.key, "loadavg_start": list(os.getloadavg()),
              "families": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in specs.items():
            spec = dict(spec, tile=small[name])
            path = Path(tmp) / f"{name}.onnx"
            ce.export(spec, path)
            tiles = real_tiles(name, spec["tile"], n=4)
            q = quantize_int8(path, tiles, _Card(name == "unet2d_seg"))
            x = tiles[:1]
            xt = torch.from_numpy(x)
            runners = {"torch_fp32": lambda: spec["module"](xt)}
            engines = {"openvino_f32": OpenVinoBackend(path, precision="f32"),
                       "openvino_int8": OpenVinoBackend(q.path, precision="f32")}
            if caps.bf16:
                engines["openvino_bf16"] = OpenVinoBackend(path, precision="bf16")
            runners.update({k: (lambda b=b: b.run(x)) for k, b in engines.items()})
            with torch.inference_mode():
                best = time_engines(runners, args.repeats)  # warm-up, then alternating, best of each
            ref = engines["openvino_f32"].run(x)
            row = {"tile": list(spec["tile"]), "gate": q.gate, "seconds": {k: round(v, 4) for k, v in best.items()},
                   "int8_x_torch": round(best["torch_fp32"] / best["openvino_int8"], 2),
                   "int8_x_f32": round(best["openvino_f32"] / best["openvino_int8"], 2),
                   "int8_psnr_vs_f32_tile0_db": round(psnr_db(ref, engines["openvino_int8"].run(x)), 1)}
            if "openvino_bf16" in best:
                row["int8_x_bf16"] = round(best["openvino_bf16"] / best["openvino_int8"], 2)
                row["bf16_psnr_vs_f32_tile0_db"] = round(psnr_db(ref, engines["openvino_bf16"].run(x)), 1)
            result["families"][name] = row
            print(name, json.dumps(row), flush=True)
    result["loadavg_end"] = list(os.getloadavg())
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_families.json").write_text(json.dumps(result, indent=2))
    lines = [f"# INT8 per family ({result['date']})", "", f"CPU: {caps.key}; load {result['loadavg_start']} (shared).",
             "", "| family | tile | gate metric | value | threshold | passed | INT8 x torch | INT8 x f32 | INT8 x bf16 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["families"].items():
        g = r["gate"]
        lines.append(f"| {name} | {r['tile']} | {g['metric']} | {g['value']} | {g['threshold']} | {g['passed']} | "
                     f"{r['int8_x_torch']} | {r['int8_x_f32']} | {r.get('int8_x_bf16', 'not measurable')} |")
    (out / "int8_families.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
