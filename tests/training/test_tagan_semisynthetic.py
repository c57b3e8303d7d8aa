"""TA-GAN on semi-synthetic real data: train a small G/D/S for a few CPU minutes, export G and S to ONNX, and
evaluate both through the tiled runtime on held-out crops. SEMI-SYNTHETIC: there are no real confocal/STED pairs
here, so the inputs are made from real clean images (blur, 2x coarser sampling, Poisson-Gaussian noise).

- Real nuclei (stardist DSB2018 image, 512x512) with their instance masks (> 0 = nucleus): columns 0..383 train,
  columns 384..511 are held out.
- W2S clean widefield images (400-frame averages): slices 0..8 train, slices 9..11 (another FOV) are held out;
  their segmentation is an Otsu threshold of the lightly smoothed clean image.

Asserts that the generator beats its input in PSNR on the held-out crops and that S beats the trivial
all-foreground Dice. Also reports ONNX-vs-PyTorch errors, tiled-vs-whole differences and eval-vs-seed-test mode
differences. Run with ``-s`` to see the numbers.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import tifffile
import torch

from scopert.export import export_run
from scopert.metrics import psnr
from scopert.runtime import load
from scopert.training.tagan import model as tagan
from scopert.training.common.runfolder import load_model
from scopert.training.tagan.data import Degradation, degrade, structure_mask
from scopert.training.tagan.train import train_tagan_with_result

TIME_LIMIT_MINUTES = 2.0
CROP = 128
SPLIT_X = 384
DEG = Degradation(sigma=2.0, factor=2, peak=20.0, read_noise=1.0)


def _minmax01(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


def _crops(a: np.ndarray, size: int = CROP) -> list[np.ndarray]:
    return [a[y:y + size, x:x + size] for y in range(0, a.shape[0] - size + 1, size)
            for x in range(0, a.shape[1] - size + 1, size)]


def _dice(pred: np.ndarray, target: np.ndarray) -> float:
    return float(2 * np.sum(pred & target) / max(1, np.sum(pred) + np.sum(target)))


def _write_stack(path, inp, target, seg) -> None:
    tifffile.imwrite(path, np.stack([inp, target.astype(np.float32), seg.astype(np.float32)]).astype(np.float32),
                    photometric="minisblack")


@pytest.mark.slow
def test_tagan_semisynthetic_restores_and_segments_held_out(data_dir, tmp_path):
    start = time.monotonic()
    rng = np.random.default_rng(0)
    nuc = tifffile.imread(data_dir / "stardist_nuclei_2d" / "stardist_dsb2018_img2d.tif")
    masks = tifffile.imread(data_dir / "stardist_nuclei_2d" / "stardist_dsb2018_mask2d.tif") > 0
    w2s = tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg400_clean.tif")

    train_dir = tmp_path / "data" / "train"
    train_dir.mkdir(parents=True)
    _write_stack(train_dir / "nuclei_left.tif", degrade(nuc[:, :SPLIT_X], rng, DEG), nuc[:, :SPLIT_X],
                 masks[:, :SPLIT_X])
    for i in range(9):
        _write_stack(train_dir / f"w2s_{i:02d}.tif", degrade(w2s[i], rng, DEG), w2s[i], structure_mask(w2s[i]))
    held = [("nuclei", degrade(nuc[:, SPLIT_X:], rng, DEG), nuc[:, SPLIT_X:], masks[:, SPLIT_X:])]
    held += [(f"w2s{i}", degrade(w2s[i], rng, DEG), w2s[i], structure_mask(w2s[i]).astype(bool)) for i in (9, 10, 11)]

    config = {
        "dataroot": str(tmp_path / "data"),
        "dataset_mode": "axons",        # [input, target, seg] stacks
        "netG": "resnet_9blocks", "netS": "resnet_6blocks", "ngf": 8, "ndf": 8,
        "batch_size": 4, "crop_size": 64,
        "lambda_GAN": 1.0, "lambda_seg": 10.0, "lambda_pixel": 100.0,   # + the pix2pix baseline's MSE
        "niter": 1000, "niter_decay": 0, "steps_per_epoch": 20,
        "val_monitor": "mse", "time_limit_minutes": TIME_LIMIT_MINUTES, "seed": 0,
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: avoid OpenMP oversubscription
    try:
        t0 = time.monotonic()
        info, result = train_tagan_with_result(config, tmp_path / "run", progress=False, device="cpu")
        train_s = time.monotonic() - t0
        card_g = export_run(info.folder, tmp_path / "tagan_G.onnx")
        card_s = export_run(info.folder / "segmentor", tmp_path / "tagan_S.onnx")
        _, g = load_model(info.folder)
        eval_g = tagan.export_module(g, info.model_config)
        seed_g = tagan.export_module(g, info.model_config | {"inference_mode": "seed_test"})
    finally:
        torch.set_num_threads(threads)
    steps = sum(int(r["steps"]) for r in result.history)

    model_g = load(tmp_path / "tagan_G.onnx", backend="ort", device="cpu")
    model_s = load(tmp_path / "tagan_S.onnx", backend="ort", device="cpu")
    rows = []
    gains, dices, trivial = [], [], []
    seed_psnr, eval_psnr, mode_diff = [], [], []
    for name, inp, clean, mask in held:
        out = model_g.predict(inp)  # the runtime: min-max to [-1, 1] per image, tiled, crop-stitched
        assert out.shape == inp.shape
        restored = (out.astype(np.float64) + 1) / 2
        target, raw = _minmax01(clean), _minmax01(inp)
        seg = model_s.predict(clean) > 0  # S on the real (clean) image, as S is trained
        seg_fake = model_s.predict(restored) > 0
        x = torch.from_numpy((raw * 2 - 1).astype(np.float32))[None, None]
        with torch.no_grad():
            y_eval, y_seed = eval_g(x)[0, 0].numpy(), seed_g(x)[0, 0].numpy()
        mode_diff.append(float(np.mean(np.abs(y_eval - y_seed))))
        for r, t, i, s, m, sf, ye, ys in zip(_crops(restored), _crops(target), _crops(raw), _crops(seg),
                                               _crops(mask), _crops(seg_fake), _crops((y_eval + 1) / 2),
                                               _crops((y_seed + 1) / 2)):
            gains.append(psnr(r, t) - psnr(i, t))
            dices.append(_dice(s, m))
            trivial.append(_dice(np.ones_like(m), m))
            eval_psnr.append(psnr(ye, t))
            seed_psnr.append(psnr(ys, t))
            rows.append((name, psnr(i, t), psnr(r, t), _dice(s, m), _dice(sf, m), _dice(np.ones_like(m), m)))

    # tiled (384, crop stitching) vs whole image (one tile) through the runtime, on a held-out W2S image
    inp = held[1][1]
    whole = model_g.predict(inp, tile=(512, 512))
    tiled = model_g.predict(inp, tile=(384, 384), stitch="crop")  # tiles must exceed 2x the halo (168 here)
    blend = model_g.predict(inp, tile=(384, 384), stitch="blend")
    odd = model_g.predict(inp[:250, :301])  # H, W not multiples of 4: padded (reflect), same shape back

    print("\nTA-GAN SEMI-SYNTHETIC (blur sigma 2, 2x coarser, Poisson peak 20 + read noise 1); held-out 128x128 crops")
    print(f"training: {train_s:.0f} s, {len(result.history)} epochs, {steps} iterations (G/D/S ngf 8, batch 4, "
          f"crop 64, lambda_pixel 100)")
    for name in dict.fromkeys(r[0] for r in rows):
        sel = [r for r in rows if r[0] == name]
        print(f"  {name:7s} input {np.mean([r[1] for r in sel]):6.2f} dB -> G {np.mean([r[2] for r in sel]):6.2f} dB;"
              f" Dice S(real) {np.mean([r[3] for r in sel]):.3f}, S(G(x)) {np.mean([r[4] for r in sel]):.3f},"
              f" all-foreground {np.mean([r[5] for r in sel]):.3f}")
    print(f"mean PSNR gain {np.mean(gains):.2f} dB (min {np.min(gains):.2f}) over {len(gains)} crops; "
          f"mean Dice {np.mean(dices):.3f} vs trivial {np.mean(trivial):.3f}")
    print(f"ONNX vs PyTorch max |err|: G {card_g.verification['onnx_vs_torch']['max_abs_error']:.2e}, "
          f"S {card_s.verification['onnx_vs_torch']['max_abs_error']:.2e}; halo G {card_g.halo}, S {card_s.halo}")
    print(f"tiled 384 crop vs whole: max {np.max(np.abs(tiled - whole)):.2e}; blend vs whole: max "
          f"{np.max(np.abs(blend - whole)):.2e}, mean {np.mean(np.abs(blend - whole)):.2e}")
    print(f"eval vs seed_test (torch, whole held-out images): mean |diff| {np.mean(mode_diff):.4f} ([-1,1] scale); "
          f"PSNR eval {np.mean(eval_psnr):.2f} dB, seed_test {np.mean(seed_psnr):.2f} dB")
    print(f"run.json inference_mode_difference (validation crops): {info.train_config['inference_mode_difference']}")
    print(f"total {time.monotonic() - start:.0f} s")

    assert odd.shape == (250, 301)
    assert card_g.verification["onnx_vs_torch"]["max_abs_error"] <= 1e-4
    assert card_s.verification["onnx_vs_torch"]["max_abs_error"] <= 1e-4
    assert np.max(np.abs(tiled - whole)) < 1e-4  # eval mode is tile invariant: crop stitching is exact
    assert np.mean(gains) > 2.0, f"G must beat its input by > 2 dB on held-out crops, got {np.mean(gains):.2f}"
    assert np.mean(dices) > np.mean(trivial) + 0.05, f"S Dice {np.mean(dices):.3f} vs trivial {np.mean(trivial):.3f}"
