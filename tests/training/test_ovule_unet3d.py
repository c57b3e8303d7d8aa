"""A small UNet3D on the real ovule confocal stack: cell boundary vs interior, labels made from the instance ids.

Training uses z-planes 0-47 (validation for best.pt: planes 40-47, part of the training range); the last 16
z-planes (48-63) are held out and scored with Dice and IoU of the boundary class. Also reported: the best global
intensity threshold chosen on the training planes (cell walls are stained, so intensity alone is a fair baseline).
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

OVULE = "ovule_3d_seg/pytorch3dunet_sample_patch.h5"
HOLD_OUT = 16
ITERS = 300
TIME_LIMIT_MIN = 3.0


def boundary_dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    pred, truth = pred.astype(bool), truth.astype(bool)
    inter = np.logical_and(pred, truth).sum()
    return (float(2 * inter / max(pred.sum() + truth.sum(), 1)),
            float(inter / max(np.logical_or(pred, truth).sum(), 1)))


def ovule_config(train: Path, val: Path, iters: int, time_limit: float | None) -> dict:
    trainer = {"checkpoint_dir": "3dunet", "validate_after_iters": 40, "log_after_iters": 40, "epochs": 1000,
               "iters": iters, "eval_score_higher_is_better": True}
    if time_limit is not None:
        trainer["time_limit_minutes"] = time_limit
    label_tf = [{"name": "StandardLabelToBoundary"}, {"name": "ToTensor", "expand_dims": True}]
    return {
        "manual_seed": 0,
        "model": {"name": "UNet3D", "in_channels": 1, "out_channels": 1, "layer_order": "gcr", "f_maps": 8,
                  "num_groups": 4, "num_levels": 3, "final_sigmoid": True, "is_segmentation": True},
        "trainer": trainer,
        "optimizer": {"learning_rate": 0.002, "weight_decay": 0.00001},
        "loss": {"name": "BCEDiceLoss"},
        "eval_metric": {"name": "MeanIoU"},
        "lr_scheduler": {"name": "ReduceLROnPlateau", "mode": "max", "factor": 0.5, "patience": 3},
        "loaders": {
            "batch_size": 2, "raw_internal_path": "raw", "label_internal_path": "label",
            "train": {"file_paths": [str(train)],
                      "slice_builder": {"name": "SliceBuilder", "patch_shape": [16, 64, 64],
                                        "stride_shape": [8, 32, 32]},
                      "transformer": {
                          "raw": [{"name": "Normalize"}, {"name": "RandomFlip"}, {"name": "RandomRotate90"},
                                  {"name": "RandomContrast", "execution_probability": 0.2},
                                  {"name": "AdditiveGaussianNoise", "execution_probability": 0.2,
                                   "scale": [0.0, 0.05]},
                                  {"name": "ToTensor", "expand_dims": True}],
                          "label": [{"name": "RandomFlip"}, {"name": "RandomRotate90"}] + label_tf}},
            "val": {"file_paths": [str(val)],
                    "slice_builder": {"name": "SliceBuilder", "patch_shape": [8, 96, 96],
                                      "stride_shape": [8, 96, 96]},
                    "transformer": {"raw": [{"name": "Normalize"}, {"name": "ToTensor", "expand_dims": True}],
                                    "label": label_tf}},
        },
    }


def run_ovule(data_dir: Path, work: Path, iters: int = ITERS, time_limit: float | None = TIME_LIMIT_MIN) -> dict:
    from scopert.training.unet.model import export_module
    from scopert.training.common.runfolder import load_model
    from scopert.training.unet.train import train_unet_with_result
    from scopert.training.unet.transforms import boundary_from_instances, normalize_raw

    with h5py.File(data_dir / OVULE, "r") as f:
        raw, label = f["raw"][...], f["label"][...]
    n_train = raw.shape[0] - HOLD_OUT
    work.mkdir(parents=True, exist_ok=True)
    with h5py.File(work / "ovule_train.h5", "w") as f:
        f["raw"], f["label"] = raw[:n_train], label[:n_train]
    with h5py.File(work / "ovule_val.h5", "w") as f:
        f["raw"], f["label"] = raw[n_train - 8:n_train], label[n_train - 8:n_train]
    cfg = work / "train_config.yaml"
    cfg.write_text(yaml.safe_dump(ovule_config(work / "ovule_train.h5", work / "ovule_val.h5", iters, time_limit)))

    # one intra-op thread: small 3D convs gain little from a second thread, and on a shared CPU the OpenMP
    # spin-waiting of two threads made iterations several times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        info, result = train_unet_with_result(cfg, work / "run", progress=False)
        train_wall, train_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        torch.set_num_threads(threads)

    held_raw, held_boundary = raw[n_train:], boundary_from_instances(label[n_train:]).astype(bool)
    _, model = load_model(info.folder)
    x = torch.from_numpy(normalize_raw(held_raw[None], {"name": "Normalize"})[None])
    with torch.no_grad():
        prob = export_module(model, info.model_config)(x)[0, 0].numpy()
    dice, iou = boundary_dice_iou(prob >= 0.5, held_boundary)

    train_boundary = boundary_from_instances(label[:n_train]).astype(bool)
    candidates = np.unique(np.percentile(raw[:n_train], np.arange(1, 100)).astype(raw.dtype))
    scores = [boundary_dice_iou(raw[:n_train] >= t, train_boundary)[0] for t in candidates]
    t_best = candidates[int(np.argmax(scores))]
    base_dice, base_iou = boundary_dice_iou(held_raw >= t_best, held_boundary)
    return {"iterations": sum(int(r["steps"]) for r in result.history), "best_val_mean_iou": -result.best_loss,
            "stopped_by_time_limit": result.stopped_by_time_limit, "train_wall_s": train_wall,
            "train_cpu_s": train_cpu, "heldout_boundary_dice": dice, "heldout_boundary_iou": iou,
            "baseline_threshold": int(t_best), "baseline_heldout_dice": base_dice, "baseline_heldout_iou": base_iou,
            "boundary_fraction": float(held_boundary.mean())}


@pytest.mark.slow
def test_ovule_unet3d_boundaries_on_held_out_planes(tmp_path, data_dir):
    r = run_ovule(data_dir, tmp_path)
    print("\nOvule UNet3D:", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    assert r["train_wall_s"] < TIME_LIMIT_MIN * 60 + 60
    # better than calling every voxel boundary (Dice 2f/(1+f)); the intensity-threshold baseline is only reported:
    # 320 iterations beat it (0.42 vs 0.39), a run cut short by the time limit on a busy machine may not
    f = r["boundary_fraction"]
    assert r["heldout_boundary_dice"] >= 2 * f / (1 + f) + 0.02, r
