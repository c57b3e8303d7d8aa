"""End to end against MONAI, repeated in fresh processes: ``predict`` (OpenVINO f32, blend) against MONAI
``sliding_window_inference`` driving the torch model, on the 3D U-Net (GroupNorm) of ``cpu_engines.py``.

Same volume (64x256x256), tile (32x128x128) and overlap (0.25: the same 27 windows). Each process measures
both side by side and alternated; torch's speed on this kind of VM changes from process to process, so the
comparison runs in several processes and reports every ratio and their median. Writes
benchmarks/results/apply_vs_monai.json.

    python benchmarks/apply_vs_monai.py [--processes 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(repeats: int) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cpu_engines

    spec = cpu_engines.build_models()["unet3d_gn"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "unet3d_gn.onnx"
        cpu_engines.export(spec, path)
        return cpu_engines.apply_vs_monai(spec, path, repeats, quick=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one_run(args.repeats), default=float))
        return
    runs = []
    for i in range(args.processes):
        out = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)], check=True,
                             capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        r = runs[-1]
        print(f"process {i + 1}: ScopeRT {r['scopert_openvino_s']} s, MONAI {r['monai_torch_s']} s -> "
              f"{r['x_monai']}x MONAI (PSNR vs MONAI {r['psnr_vs_monai_db']} dB)", flush=True)
    result = {"runs": runs, "median_x_monai": statistics.median(r["x_monai"] for r in runs),
              "min_x_monai": min(r["x_monai"] for r in runs)}
    out = REPO / "benchmarks" / "results" / "apply_vs_monai.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"median {result['median_x_monai']}x MONAI, lowest {result['min_x_monai']}x over {len(runs)} processes; "
          f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
