"""RCAN-3D ``scopert apply``, file to file, against torch eager FP32 doing the same job (issue 16).

Model: a 3D-RCAN run folder (``--run``, e.g. a ``scopert train`` run or the demo's ``demo_out/run``), or the
default 3D-RCAN architecture (``default_model_config(3)``) with seeded random weights. It is exported by
``export_run`` and its CPU gates are recorded on tiles of the input file, as ``scopert export --cpu-gates
--calib INPUT`` does.

- ScopeRT: the CLI itself, in this process: ``scopert apply -i INPUT -o OUT.tif`` with its defaults
  (``--backend auto``, ``--precision auto``), model loading and OpenVINO compilation included.
- torch: the same file through the same reader, tiler, stitcher and TIFF writer, with the network run by
  the PyTorch module in eager FP32 (``torch.inference_mode``, same threads) in place of the engine, so
  the ratio is the engine and precision, and both outputs hold the same tiles.

The two alternate (``--repeats``, best of each); the first ScopeRT run, which measures the CPU engines for
``--backend auto`` and caches the choice, is reported apart. PSNR of ScopeRT's output against torch's, with
the torch output's range as the peak. Writes benchmarks/results/apply_vs_torch.{json,md}.

    python benchmarks/apply_vs_torch.py [--input FILE] [--run RUN_FOLDER] [--repeats 3]
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tifffile  # noqa: E402
import torch  # noqa: E402

from scopert.runtime.apply import ApplyOptions, plan_apply, run_apply  # noqa: E402
from scopert.runtime.backends.base import Backend, BackendInfo  # noqa: E402
from scopert.runtime.cpu import cpu_caps  # noqa: E402
from scopert.runtime.compare import psnr_db  # noqa: E402
from scopert.runtime.model import Model  # noqa: E402

DATA = Path(os.environ.get("SCOPERT_SHARED", REPO.parent / "shared")) / "data"
DEFAULT_INPUT = DATA / "em_misc" / "cylindra_13pf_MT.tif"
THREADS = os.cpu_count() or 1


class TorchEagerBackend(Backend):
    """The PyTorch module as a backend: FP32, eager, the process's torch threads."""

    def __init__(self, module: torch.nn.Module, card) -> None:
        self.module = module
        self.info = BackendInfo("torch", "cpu", "fp32", reason="baseline: PyTorch eager FP32")
        self.input_name, self.output_name, self.metadata = card.input.name, card.output.name, {}

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    def close(self) -> None:
        pass


def default_run(folder: Path, seed: int = 0) -> Path:
    """A run folder of the default 3D-RCAN with seeded random weights."""
    from scopert.training.common.runfolder import save_checkpoint
    from scopert.training.rcan.model import default_model_config
    from scopert.training.common.registry import get_family
    from scopert.training.common.runfolder import RunInfo, write_run_info

    info = RunInfo(folder, "rcan", default_model_config(3), {"epochs": 0}, {})
    write_run_info(info)
    torch.manual_seed(seed)
    model = get_family("rcan").build_model(info.model_config)
    save_checkpoint(info.best_checkpoint, {"model_state_dict": model.state_dict(), "epoch": 0})
    return folder


def scopert_apply(model_path: Path, inp: Path, out: Path) -> float:
    """The CLI, in this process, with its defaults; seconds."""
    from scopert.cli import cli

    t0 = time.perf_counter()
    cli.main(["apply", "-m", str(model_path), "-i", str(inp), "-o", str(out), "--overwrite"], standalone_mode=False)
    return time.perf_counter() - t0


def torch_apply(run_folder: Path, model_path: Path, inp: Path, out: Path) -> float:
    """Load the checkpoint, run the file through apply with the torch module as the engine; seconds."""
    from scopert.export.onnx_export import read_card
    from scopert.training.common.registry import get_family
    from scopert.training.common.runfolder import load_model

    t0 = time.perf_counter()
    info, module = load_model(run_folder)
    family = get_family(info.family)
    module = (family.export_module(module, info.model_config) if family.export_module else module).float().eval()
    card = read_card(model_path)
    model = Model(TorchEagerBackend(module, card), card, model_path)
    if out.exists():
        out.unlink()
    run_apply(plan_apply(model, inp, out, opts=ApplyOptions()))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="a 3D image file (TIFF, HDF5, Zarr)")
    ap.add_argument("--run", type=Path, default=None, help="an RCAN-3D run folder (default: random-init default RCAN)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--name", default="apply_vs_torch", help="result file stem")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(THREADS)
    from scopert.export.int8 import record_cpu_gates
    from scopert.export.onnx_export import export_run, read_card

    caps = cpu_caps()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_folder = args.run or default_run(tmp / "run")
        model_path = tmp / "models" / "rcan3d.onnx"
        t0 = time.perf_counter()
        export_run(run_folder, model_path)
        gates = record_cpu_gates(model_path, [args.input])
        export_s = time.perf_counter() - t0
        card = read_card(model_path)
        print(f"exported in {export_s:.1f} s; bf16 gate: {gates['bf16_gate']}", flush=True)
        ours, theirs = tmp / "scopert.tif", tmp / "torch.tif"
        first = scopert_apply(model_path, args.input, ours)  # an f32 choice would measure the CPU engines here
        from scopert.runtime import load

        with load(model_path, precision="auto", threads=THREADS) as chosen:  # what the CLI's defaults picked
            engine = {"backend": chosen.backend.info.name, "precision": chosen.backend.info.precision,
                      "reason": chosen.backend.info.reason}
        t_ours, t_torch = [], []
        for i in range(args.repeats):
            t_torch.append(torch_apply(run_folder, model_path, args.input, theirs))
            t_ours.append(scopert_apply(model_path, args.input, ours))
            print(f"repeat {i}: torch {t_torch[-1]:.2f} s, scopert {t_ours[-1]:.2f} s", flush=True)
        a, b = tifffile.imread(ours).astype(np.float32), tifffile.imread(theirs).astype(np.float32)
        image = tifffile.TiffFile(args.input)
        shape = list(image.series[0].shape)
        image.close()
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": caps.model, "bf16": caps.bf16_evidence, "threads": THREADS,
        "loadavg": list(os.getloadavg()), "input": str(args.input.relative_to(DATA.parent))
        if args.input.is_relative_to(DATA.parent) else str(args.input), "input_shape": shape,
        "model": "default 3D-RCAN, random init (seed 0)" if args.run is None else f"run folder {args.run}",
        "model_config": card.training_config.get("model"), "bf16_gate": gates["bf16_gate"],
        "engine": engine, "first_scopert_s": round(first, 2),
        "scopert_s": [round(t, 2) for t in t_ours], "torch_s": [round(t, 2) for t in t_torch],
        "x_torch": round(min(t_torch) / min(t_ours), 2), "psnr_scopert_vs_torch_db": round(psnr_db(b, a), 1),
        "versions": {"torch": torch.__version__},
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    md = [f"# RCAN-3D apply, file to file, vs torch eager FP32 ({result['date']})", "",
          f"CPU: {caps.model}, {THREADS} threads; bf16: {caps.bf16_evidence}; load average {result['loadavg']}.",
          f"Input: `{result['input']}` {shape}; model: {result['model']} ({result['model_config']}).",
          f"bf16 gate recorded at export on the input's tiles: {gates['bf16_gate']}.", "",
          "| | best s | runs s |", "|---|---|---|",
          f"| torch eager FP32 (same reader, tiles, stitcher, writer) | {min(t_torch):.2f} | {result['torch_s']} |",
          f"| `scopert apply` (defaults: --backend auto --precision auto) | {min(t_ours):.2f} | "
          f"{result['scopert_s']} |",
          f"| `scopert apply`, first run | {first:.2f} | |", "",
          f"**{result['x_torch']}x torch**, PSNR of ScopeRT's output vs torch's: "
          f"**{result['psnr_scopert_vs_torch_db']} dB**.",
          f"Engine picked by the defaults: {engine['backend']} {engine['precision']} ({engine['reason']})."]
    (args.results / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
