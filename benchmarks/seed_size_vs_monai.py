"""The default path against MONAI at the seed's own network size, side by side in one process (issue 24).

``default_path_vs_monai.py`` runs the small test networks of ``tests/families.py`` (4-8 channels), which are
memory-bound: bf16 hardly helps them. A user's 3D-RCAN is the seed's ``config.json`` network (32 channels, 3
residual groups of 3 blocks, channel reduction 8): compute-bound, where the engine and precision matter. This
script writes such a network in the seed's Keras format (random weights: speed does not depend on them),
imports and exports it as a user would, and times on the ovule volume (64x200x200, pytorch-3dunet's sample):
``scopert apply``'s defaults (``load(..., precision='auto', calibration=...)`` then ``predict``: the tile from
``tile_cost``, the measured engine, bf16 where the CPU has it and the gate passes on the input's tiles), the same
defaults forced to f32, and MONAI's ``sliding_window_inference`` (roi 32x128x128, the issue's setting, overlap
0.25, gaussian) driving an ONNX Runtime session of the same file; best of ``REPEATS``. Writes
``benchmarks/results/seed_size_vs_monai.{json,md}``.

Run: ``.venv/bin/python benchmarks/seed_size_vs_monai.py``  (needs ``pip install monai``)
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "results" / "seed_size_vs_monai"
REPEATS = 2
SEED_RCAN = {"channels": 32, "groups": 3, "blocks": 3, "reduction": 8}  # 3D-RCAN's config.json


def seed_size_rcan(folder: Path) -> Path:
    from scopert.export import export_run
    from scopert.training.rcan.importer import import_keras_rcan
    from tests.training.test_keras_rcan_import import keras_rcan_config, write_keras_file

    config, _ = keras_rcan_config(ndim=3, shape=(8, 32, 32), **SEED_RCAN)
    src = folder / "weights_100_0.01000000.hdf5"
    write_keras_file(src, config, np.random.default_rng(0))
    out = folder / "rcan_seed.onnx"
    export_run(import_keras_rcan(src, folder / "run").folder, out)
    return out


def main() -> None:
    import onnxruntime as ort
    import torch
    from monai.inferers import sliding_window_inference

    from scopert.runtime import load
    from scopert.runtime.apply import calibration_sample
    from scopert.runtime.normalize import fit_normalization

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="seed_size_"))
    with h5py.File(DATA / "ovule_3d_seg" / "pytorch3dunet_sample_patch.h5", "r") as f:
        x = f["raw"][:]  # 64 x 200 x 200
    path = seed_size_rcan(work)
    model = load(path, precision="auto", calibration=calibration_sample(x))
    f32 = load(path, precision="f32")
    tile, why = model.tile_choice(dict(zip(model.in_layout.tiled, x.shape)))
    norm = fit_normalization(x, model.card.normalization)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    inp = torch.from_numpy(norm(x.astype(np.float32))[None, None])

    def monai(roi):
        return lambda: sliding_window_inference(inp, roi, 1, lambda t: torch.from_numpy(
            session.run(None, {name: t.numpy()})[0]), overlap=0.25, mode="gaussian")[0].numpy()

    runs = {"default": lambda: model.predict(x), "f32": lambda: f32.predict(x),
            "monai_32x128x128": monai((32, 128, 128))}
    best = {k: float("inf") for k in runs}
    for _ in range(REPEATS):
        for key, run in runs.items():
            t0 = time.perf_counter()
            run()
            best[key] = min(best[key], time.perf_counter() - t0)
            print(key, round(best[key], 2), flush=True)
    gate = model.precision_decision
    row = {"network": f"3D-RCAN {SEED_RCAN}", "volume": list(x.shape), "default_tile": list(tile.values()),
           "tile_why": why, "backend": model.backend.info.name, "precision": model.backend.info.precision,
           "precision_why": gate.reason if gate else "", "f32_backend": f32.backend.info.name,
           "seconds": {k: round(v, 3) for k, v in best.items()},
           "x_monai": {k: round(best[k] / best["default"], 2) for k in best if k.startswith("monai")},
           "x_monai_f32_default": {k: round(best[k] / best["f32"], 2) for k in best if k.startswith("monai")},
           "cpu_threads": torch.get_num_threads()}
    print(json.dumps(row, indent=1))
    OUT.with_suffix(".json").write_text(json.dumps(row, indent=1))
    lines = [f"3D-RCAN at the seed's config.json size ({SEED_RCAN}), ovule volume {'x'.join(map(str, x.shape))}; "
             f"defaults chose tile {'x'.join(map(str, tile.values()))}, {row['backend']} {row['precision']} "
             f"({row['precision_why']}); f32 default engine: {row['f32_backend']}.", "",
             "| path | seconds | default x faster |", "|---|---|---|"]
    for k, v in best.items():
        lines.append(f"| {k} | {v:.2f} | {v / best['default']:.2f} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
