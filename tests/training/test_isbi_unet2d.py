"""ISBI 2012 EM membranes with a UNet2D: train on 24 slices (CPU, time-limited), predict the 6 held-out slices
through the exported ONNX and the tiled runtime, and beat the best global-threshold baseline.

Membranes (label 0) are the minority class and are what is scored. The training HDF5 stores the membrane mask as
``label`` (1 = membrane), which is how a pytorch-3dunet user would set up this task. Validation (best.pt selection)
uses training slices 20-23 only, so the held-out slices 24-29 are seen by nothing but the final score.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import yaml

ISBI = "isbi2012_em"
N_TRAIN = 24
ITERS = 200
TIME_LIMIT_MIN = 3.0


def load_isbi(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = tifffile.imread(data_dir / ISBI / "isbi2012_train_volume.tif")
    membrane = (tifffile.imread(data_dir / ISBI / "isbi2012_train_labels.tif") == 0).astype(np.uint8)
    return raw, membrane


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    return float(2 * np.logical_and(pred, truth).sum() / max(pred.sum() + truth.sum(), 1))


def threshold_baseline(raw: np.ndarray, membrane: np.ndarray) -> tuple[int, float, float]:
    """The global intensity threshold t (membrane = raw <= t) that maximizes membrane Dice on the training slices;
    returns t, its training Dice and its held-out Dice."""
    train_raw, train_m = raw[:N_TRAIN], membrane[:N_TRAIN].astype(bool)
    hist_all = np.bincount(train_raw.ravel(), minlength=256).astype(np.float64)
    hist_mem = np.bincount(train_raw[train_m].ravel(), minlength=256).astype(np.float64)
    pred_size = np.cumsum(hist_all)  # pixels with raw <= t
    tp = np.cumsum(hist_mem)
    scores = 2 * tp / (pred_size + train_m.sum())
    t = int(np.argmax(scores))
    return t, float(scores[t]), dice(raw[N_TRAIN:] <= t, membrane[N_TRAIN:])


def isbi_config(train: Path, val: Path, iters: int = ITERS, time_limit: float | None = TIME_LIMIT_MIN) -> dict:
    """pytorch-3dunet's train_config_2d shape, sized for a CPU."""
    trainer = {"checkpoint_dir": "3dunet", "validate_after_iters": 50, "log_after_iters": 50, "epochs": 1000,
               "iters": iters, "eval_score_higher_is_better": True}
    if time_limit is not None:
        trainer["time_limit_minutes"] = time_limit
    return {
        "manual_seed": 0,
        "model": {"name": "UNet2D", "in_channels": 1, "out_channels": 1, "layer_order": "gcr", "f_maps": 16,
                  "num_groups": 8, "final_sigmoid": True, "is_segmentation": True},
        "trainer": trainer,
        "optimizer": {"learning_rate": 0.002, "weight_decay": 0.00001},
        "loss": {"name": "BCEDiceLoss"},
        "eval_metric": {"name": "DiceCoefficient"},
        "lr_scheduler": {"name": "ReduceLROnPlateau", "mode": "max", "factor": 0.5, "patience": 3},
        "loaders": {
            "dataset": "StandardHDF5Dataset", "batch_size": 4, "num_workers": 0,
            "raw_internal_path": "raw", "label_internal_path": "label",
            "train": {"file_paths": [str(train)],
                      "slice_builder": {"name": "SliceBuilder", "patch_shape": [1, 128, 128],
                                        "stride_shape": [1, 64, 64]},
                      "transformer": {
                          "raw": [{"name": "Normalize"}, {"name": "RandomFlip"}, {"name": "RandomRotate90"},
                                  {"name": "RandomContrast", "execution_probability": 0.2},
                                  {"name": "AdditiveGaussianNoise", "execution_probability": 0.2,
                                   "scale": [0.0, 0.05]},
                                  {"name": "ToTensor", "expand_dims": True}],
                          "label": [{"name": "RandomFlip"}, {"name": "RandomRotate90"},
                                    {"name": "ToTensor", "expand_dims": True}]}},
            "val": {"file_paths": [str(val)],
                    "slice_builder": {"name": "SliceBuilder", "patch_shape": [1, 256, 256],
                                      "stride_shape": [1, 256, 256]},
                    "transformer": {"raw": [{"name": "Normalize"}, {"name": "ToTensor", "expand_dims": True}],
                                    "label": [{"name": "ToTensor", "expand_dims": True}]}},
        },
    }


def write_isbi_config(raw: np.ndarray, membrane: np.ndarray, work: Path, iters: int = ITERS,
                      time_limit: float | None = TIME_LIMIT_MIN) -> Path:
    """The training and validation HDF5 files (slices 0-23 and 20-23) and the YAML config; its path."""
    work.mkdir(parents=True, exist_ok=True)
    with h5py.File(work / "isbi_train.h5", "w") as f:
        f["raw"], f["label"] = raw[:N_TRAIN], membrane[:N_TRAIN]
    with h5py.File(work / "isbi_val.h5", "w") as f:
        f["raw"], f["label"] = raw[20:N_TRAIN], membrane[20:N_TRAIN]
    cfg = work / "train_config_2d.yaml"
    cfg.write_text(yaml.safe_dump(isbi_config(work / "isbi_train.h5", work / "isbi_val.h5", iters, time_limit)))
    return cfg


def run_isbi(data_dir: Path, work: Path, iters: int = ITERS, time_limit: float | None = TIME_LIMIT_MIN) -> dict:
    """Train, export, predict the held-out slices through the runtime; every number of the issue in a dict."""
    from scopert.export.onnx_export import export_run
    from scopert.runtime import load
    from scopert.training.unet.train import train_unet_with_result

    raw, membrane = load_isbi(data_dir)
    cfg = write_isbi_config(raw, membrane, work, iters, time_limit)

    wall0, cpu0 = time.perf_counter(), time.process_time()
    info, result = train_unet_with_result(cfg, work / "run", progress=False)
    train_wall, train_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    card = export_run(info.folder, work / "isbi_unet2d.onnx")
    model = load(work / "isbi_unet2d.onnx")
    held_raw, held_mem = raw[N_TRAIN:], membrane[N_TRAIN:]
    t0 = time.perf_counter()
    probs = np.stack([model.predict(s, tile=256, batch=2) for s in held_raw])
    predict_s = time.perf_counter() - t0
    t, base_train, base_held = threshold_baseline(raw, membrane)
    return {
        "iterations": sum(int(r["steps"]) for r in result.history), "validations": len(result.history),
        "best_val_dice": -result.best_loss, "stopped_by_time_limit": result.stopped_by_time_limit,
        "train_wall_s": train_wall, "train_cpu_s": train_cpu,
        "onnx_vs_torch": card.verification["onnx_vs_torch"]["max_abs_error"],
        "heldout_membrane_dice": dice(probs >= 0.5, held_mem),
        "baseline_threshold": t, "baseline_train_dice": base_train, "baseline_heldout_dice": base_held,
        "predict_s": predict_s, "probs": probs, "model": model, "held_raw": held_raw,
    }


@pytest.mark.slow
def test_isbi_unet2d_membranes_beat_the_threshold_baseline(tmp_path, data_dir):
    r = run_isbi(data_dir, tmp_path)
    numbers = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
               if k not in ("probs", "model", "held_raw")}
    print("\nISBI UNet2D:", numbers)
    assert r["onnx_vs_torch"] <= 1e-4
    assert r["train_wall_s"] < TIME_LIMIT_MIN * 60 + 60  # the limit ends the run after the step that crosses it
    assert r["heldout_membrane_dice"] >= 0.70, numbers
    assert r["heldout_membrane_dice"] >= r["baseline_heldout_dice"] + 0.10, numbers
    # Model.stream over held-out slices gives what predict gave
    streamed = list(r["model"].stream(list(r["held_raw"][:3]), tile=256, batch=2))
    assert len(streamed) == 3
    assert max(float(np.abs(a - b).max()) for a, b in zip(streamed, r["probs"][:3])) <= 1e-5
