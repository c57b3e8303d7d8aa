"""ORT intra-op spinning (session.intra_op.allow_spinning) vs the pipeline's threads (issue 16): a 2D RCAN
``predict`` of a 768x768 image (256^2 tiles, crop) in fresh processes, spinning on and off alternating;
wall and CPU seconds per run. The child patches SessionOptions, so it measures both settings whatever
OrtBackend sets.

    python benchmarks/ort_spinning.py run 5
"""
import json, os, subprocess, sys, time
from pathlib import Path
import numpy as np
REPO = Path(__file__).resolve().parents[1]; sys.path.insert(0, str(REPO)); sys.path.insert(0, str(REPO / "benchmarks"))
MODEL = Path(os.environ.get("TMPDIR", "/tmp")) / "scopert_rcan2d_spin.onnx"

def child(spin: str, mode: str) -> None:
    import onnxruntime as ort
    base = ort.SessionOptions
    key = "session.intra_op.allow_spinning"

    class Opts(base):  # this run's setting wins over whatever OrtBackend sets
        def __init__(self):
            super().__init__()
            base.add_session_config_entry(self, key, spin)

        def add_session_config_entry(self, k, v):
            if k != key:
                base.add_session_config_entry(self, k, v)
    ort.SessionOptions = Opts
    from scopert.runtime import load
    from scopert.runtime.bench import synthetic_volume
    m = load(MODEL, backend="ort", device="cpu", precision="f32")
    vol = synthetic_volume((768, 768))
    m.predict(vol[:256, :256], tile=(256, 256), stitch="crop")  # warm-up
    t0 = time.perf_counter(); c0 = time.process_time()
    if mode == "predict":
        m.predict(vol, tile=(256, 256), stitch="crop")
    else:
        x = np.random.default_rng(0).random((1, 1, 256, 256), np.float32)
        for _ in range(9):
            m.backend.run(x)
    print(json.dumps({"s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}))

if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3]); sys.exit()
    if not MODEL.exists():
        import torch, cpu_engines as ce
        from scopert.training.models.rcan import build_model, default_model_config
        torch.manual_seed(0)
        mod = build_model(default_model_config(2)).eval()
        ce.export({"module": mod, "tile": (1, 1, 256, 256), "axes": "bcyx", "halo": 16, "divisor": 1}, MODEL)
    res = {}
    for rnd in range(int(sys.argv[2]) if len(sys.argv) > 2 else 5):
        for mode in ("predict",):
            for spin in ("1", "0"):
                out = subprocess.run([sys.executable, __file__, "child", spin, mode], capture_output=True, text=True)
                line = [l for l in out.stdout.splitlines() if l.startswith("{")]
                r = json.loads(line[-1]) if line else {"err": out.stderr[-300:]}
                res.setdefault(f"{mode}_spin{spin}", []).append(r)
                print(mode, spin, r, os.getloadavg()[0], flush=True)
    for k, v in res.items():
        s = [r["s"] for r in v if "s" in r]
        print(k, "seconds", [round(x, 2) for x in s], "median", round(float(np.median(s)), 2), "max/min", round(max(s) / min(s), 2),
              "cpu_s", [round(r["cpu_s"], 1) for r in v if "s" in r])
    REPO / "benchmarks" / "results" / "ort_spinning.json".write_text(json.dumps(res, indent=1))
