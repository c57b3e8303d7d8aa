"""ONNX Runtime's spinning intra-op threads against the pipeline's threads (issue 16).

The issue's case: a tiled ``predict`` of a 2D RCAN (default 3D-RCAN settings in 2D, random init) over a
2048x2048 image in 256x256 tiles, crop stitching, on ONNX Runtime. Each run is a fresh process (the spread
between processes is the symptom), with ``session.intra_op.allow_spinning`` on (ONNX Runtime's default, the
"before") and off (what ``OrtBackend`` sets, the "after"), alternating. Wall and CPU seconds per run; the
child forces the setting whatever ``OrtBackend`` sets. Writes benchmarks/results/ort_spinning.{json,md}.

    python benchmarks/ort_spinning.py [--runs 5] [--size 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPIN_KEY = "session.intra_op.allow_spinning"


def child(model: Path, spin: str, size: int) -> None:
    """One timed predict with spinning forced to ``spin``; prints a JSON line."""
    import onnxruntime as ort

    base = ort.SessionOptions

    class ForcedSpin(base):  # this run's setting wins over the one OrtBackend sets
        def __init__(self) -> None:
            super().__init__()
            base.add_session_config_entry(self, SPIN_KEY, spin)

        def add_session_config_entry(self, key: str, value: str) -> None:
            if key != SPIN_KEY:
                base.add_session_config_entry(self, key, value)

    ort.SessionOptions = ForcedSpin
    sys.path.insert(0, str(REPO))
    from scopert.runtime import load
    from scopert.runtime.tools.bench import synthetic_volume

    model = load(model, backend="ort", device="cpu", precision="f32")
    image = synthetic_volume((size, size))
    model.predict(image[:256, :256], tile=(256, 256), stitch="crop")  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    model.predict(image, tile=(256, 256), stitch="crop")
    print(json.dumps({"s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                      "tiles": model.last_stats.tiles if model.last_stats else None}))


def export_rcan2d(path: Path) -> None:
    import torch

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cpu_engines

    from scopert.training.rcan.model import build_model, default_model_config

    torch.manual_seed(0)
    module = build_model(default_model_config(2)).eval()
    cpu_engines.export({"module": module, "tile": (1, 1, 256, 256), "axes": "bcyx", "halo": 16, "divisor": 1}, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per setting")
    ap.add_argument("--size", type=int, default=2048, help="image side")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"spin_on (before)": [], "spin_off (after)": []}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "rcan2d.onnx"
        export_rcan2d(model)
        for i in range(args.runs):
            for name, spin in (("spin_on (before)", "1"), ("spin_off (after)", "0")):
                out = subprocess.run([sys.executable, __file__, "--child", str(model), spin, str(args.size)],
                                     capture_output=True, text=True)
                lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
                if not lines:
                    raise SystemExit(f"child failed: {out.stderr[-2000:]}")
                row = json.loads(lines[-1]) | {"loadavg": round(os.getloadavg()[0], 2)}
                runs[name].append(row)
                print(i, name, row, flush=True)
    summary = {}
    for name, rows in runs.items():
        wall = [r["s"] for r in rows]
        summary[name] = {"wall_s": [round(s, 2) for s in wall], "median_s": round(float(np.median(wall)), 2),
                         "max_over_min": round(max(wall) / min(wall), 3),
                         "cpu_s": [round(r["cpu_s"], 1) for r in rows],
                         "median_cpu_s": round(float(np.median([r["cpu_s"] for r in rows])), 1)}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "image": [args.size, args.size], "tile": [256, 256],
              "tiles": runs["spin_off (after)"][0].get("tiles"), "runs": runs, "summary": summary}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ort_spinning.json").write_text(json.dumps(result, indent=2))
    md = [f"# ONNX Runtime spinning threads, {args.runs} fresh processes each ({result['date']})", "",
          f"2D RCAN predict, {args.size}x{args.size}, 256x256 tiles, crop, {result['tiles']} tiles, "
          f"{os.cpu_count()} cores.", "",
          "| setting | wall s per process | median | max/min | CPU s median |", "|---|---|---|---|---|"]
    md += [f"| {name} | {s['wall_s']} | {s['median_s']} | {s['max_over_min']} | {s['median_cpu_s']} |"
           for name, s in summary.items()]
    (args.results / "ort_spinning.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        main()
