"""CNNT on real brightfield video (semi-synthetic noise): train <= 2 CPU minutes, export, restore through the
tiled runtime, and gain >= 6 dB PSNR on held-out frames.

Data: the first 40 frames of trackpy's bulk_water movie (424x640 uint8). Clean = frames / 255; noisy =
Poisson(clean * 40 photons) / 40 + N(0, 0.02) (seeded). Frames 0..27 train (columns < 512) and validate
(columns >= 512); frames 28..39 are held out. Evaluation runs the exported ONNX through ``Model.predict`` on
frames 28..39 (12 frames, more than T = 8, so the runtime slides over time), a 192x256 region tiled in 96x96
tiles, and scores the 8 frames 32..39, which training never saw.
"""

from __future__ import annotations

import logging
import time

import h5py
import numpy as np
import pytest
import tifffile

from scopert.export.onnx_export import export_run
from scopert.metrics import psnr
from scopert.runtime.loader import load
from scopert.training.cnnt.train import train_cnnt_with_result

log = logging.getLogger(__name__)

PHOTONS = 40.0
READ_NOISE = 0.02
TRAIN_FRAMES = 28
REGION = (slice(100, 292), slice(200, 456))
TRAIN_MINUTES = 2.0


def _noisy_movie(data_dir) -> tuple[np.ndarray, np.ndarray]:
    stack = tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")
    clean = stack.astype(np.float32) / 255.0
    rng = np.random.default_rng(5)
    noisy = rng.poisson(clean * PHOTONS).astype(np.float32) / PHOTONS
    noisy += rng.normal(0.0, READ_NOISE, clean.shape).astype(np.float32)
    return noisy, clean


def _write(path, noisy, clean) -> None:
    with h5py.File(path, "w") as fh:
        fh.create_dataset("movie/noisy_im", data=noisy)
        fh.create_dataset("movie/clean_im", data=clean)


@pytest.mark.slow
def test_cnnt_bulk_water_gains_6db_through_runtime(tmp_path, data_dir):
    noisy, clean = _noisy_movie(data_dir)
    _write(tmp_path / "train.h5", noisy[:TRAIN_FRAMES, :, :512], clean[:TRAIN_FRAMES, :, :512])
    _write(tmp_path / "val.h5", noisy[:TRAIN_FRAMES, :, 512:], clean[:TRAIN_FRAMES, :, 512:])
    config = {
        "train_files": [str(tmp_path / "train.h5")], "val_files": [str(tmp_path / "val.h5")],
        "blocks": [16, 32], "blocks_per_set": 1, "n_head": 4, "time": 8, "with_mixer": False,
        "height": [32, 40], "width": [32, 40], "im_value_scale": [0.0, 1.0],
        "loss": ["mse", "ssim"], "loss_weights": [0.1, 1.0], "global_lr": 1e-3,
        "batch_size": 4, "num_epochs": 1000, "steps_per_epoch": 8, "val_steps": 1,
        "time_limit_minutes": TRAIN_MINUTES, "seed": 0,
    }
    start = time.monotonic()
    info, result = train_cnnt_with_result(config, tmp_path / "run", progress=False)
    train_s = time.monotonic() - start
    card = export_run(tmp_path / "run", tmp_path / "cnnt.onnx")
    onnx_err = card.verification["onnx_vs_torch"]["max_abs_error"]
    model = load(tmp_path / "cnnt.onnx")
    held_noisy = noisy[TRAIN_FRAMES:, REGION[0], REGION[1]]
    held_clean = clean[TRAIN_FRAMES:, REGION[0], REGION[1]]
    restored = model.predict(held_noisy, tile=(8, 96, 96))
    assert restored.shape == held_noisy.shape
    score = slice(4, None)  # frames 32..39: never seen in training, not even as context
    before = psnr(held_noisy[score], held_clean[score])
    after = psnr(np.clip(restored[score], 0, 1), held_clean[score])
    gain = after - before
    log.warning("cnnt bulk water: %d epochs, %.0f s training, best val_loss %.4f; ONNX vs torch %s; "
                "held-out PSNR %.2f -> %.2f dB (gain %.2f dB)", result.last_epoch, train_s, result.best_loss,
                onnx_err, before, after, gain)
    print(f"CNNT_BULKWATER epochs={result.last_epoch} train_s={train_s:.0f} psnr_noisy={before:.2f} "
          f"psnr_restored={after:.2f} gain={gain:.2f} onnx={onnx_err}")
    assert onnx_err <= 1e-4
    assert gain >= 6.0
