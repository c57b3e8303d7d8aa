"""Train a small SHINE blind-spot denoiser on real W2S noisy frames alone, export it to ONNX and restore held-out
frames with the tiled runtime; against the clean references (never used for training) it must gain >= 4 dB of
scale-invariant PSNR over the noisy input.

The 12 W2S slices are 4 FOVs x 3 channels (index.txt), not a time series, so neighbouring slices do not show the
same signal: the window is one frame (frame_num 1) with a 1x1 blind spot (pixel-independent camera noise). Slices
0..8 (FOVs 001-003) train; slices 9..11 (FOV 004) are held out entirely. Run with ``-s`` to see the numbers.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import tifffile

from scopert.export import export_run
from scopert.metrics import scale_invariant_psnr
from scopert.runtime import load
from scopert.training.blindspot.train import train_blindspot_with_result

TRAIN_SLICES = list(range(0, 9))
TEST_SLICES = (9, 10, 11)
TIME_LIMIT_MINUTES = 2.0


@pytest.mark.slow
def test_w2s_blindspot_denoises_held_out_frames(data_dir, tmp_path):
    start = time.monotonic()
    folder = data_dir / "w2s_8bit_pairs"
    noisy = tifffile.imread(folder / "w2s_avg1_noisy.tif")
    clean = tifffile.imread(folder / "w2s_avg400_clean.tif")
    tifffile.imwrite(tmp_path / "noisy_train.tif", noisy[TRAIN_SLICES])  # noisy frames only: no clean image

    config = {
        "data_path": str(tmp_path / "noisy_train.tif"),
        "model": "1x1_blind", "frame_num": 1, "filter": 16,
        "img_size": 64, "batch_size": 8, "learning_rate": 2e-3,
        "max_epochs": 1000, "steps_per_epoch": 20, "val_frames": 0,
        "time_limit_minutes": TIME_LIMIT_MINUTES, "seed": 0,
    }
    info, result = train_blindspot_with_result(config, tmp_path / "run", progress=False)
    train_s = time.monotonic() - start
    assert result.stopped_by_time_limit or result.last_epoch == 1000

    t0 = time.monotonic()
    card = export_run(info.folder, tmp_path / "shine.onnx")
    export_s = time.monotonic() - t0
    err = card.verification["onnx_vs_torch"]["max_abs_error"]
    assert err <= 1e-4
    assert card.input.time_window == 1 and card.halo["y"] >= 150

    model = load(tmp_path / "shine.onnx", backend="ort")
    test = noisy[list(TEST_SLICES)].astype(np.float32)
    restored = model.predict(test, tile=576, stitch="crop", axes="tyx")  # 256-px core + 160-px halo
    assert restored.shape == test.shape
    gains = []
    for k, i in enumerate(TEST_SLICES):
        before = scale_invariant_psnr(test[k], clean[i].astype(np.float32))
        after = scale_invariant_psnr(restored[k], clean[i].astype(np.float32))
        # The min-max remap puts the output on the raw centre frame's range.
        assert abs(float(restored[k].min()) - float(test[k].min())) < 1e-3
        assert abs(float(restored[k].max()) - float(test[k].max())) < 1e-3
        gains.append(after - before)
        print(f"slice {i}: noisy {before:.2f} dB -> blindspot {after:.2f} dB ({after - before:+.2f})")
    whole = model.predict(test[:1], tile=832, stitch="crop", axes="tyx")  # one tile: the whole frame
    crop_diff = float(np.max(np.abs(whole - restored[:1])) / (np.ptp(test[0]) or 1.0))
    print(f"train {train_s:.0f} s ({result.last_epoch} epochs), export {export_s:.1f} s, onnx-vs-torch {err:.2e}, "
          f"mean gain {np.mean(gains):+.2f} dB, tile-576 vs whole-frame max diff {crop_diff:.2e} of the raw range")
    assert export_s < 30
    assert np.mean(gains) >= 4.0, gains
    assert min(gains) >= 2.0, gains
