"""numpy metrics (scopert.metrics) and their torch twins (scopert.training.rcan.losses) against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scopert import metrics as npm
from scopert.errors import InputError
from scopert.training.rcan import losses as tl


def test_psnr_of_a_known_mse():
    gt = np.zeros((10, 10))
    pred = gt + 0.1  # MSE = 0.01 -> 20 dB with peak 1
    assert npm.psnr(pred, gt) == pytest.approx(20.0)
    pred2 = gt.copy()
    pred2[0, :] = 1.0  # MSE = 10/100 = 0.1 -> 10 dB
    assert npm.psnr(pred2, gt) == pytest.approx(10.0)
    assert npm.psnr(gt, gt) == math.inf
    assert npm.psnr(pred, gt, data_range=255.0) == pytest.approx(20 * math.log10(255) + 20)


def test_torch_psnr_and_losses_per_sample_then_batch():
    pred = torch.zeros(2, 1, 4, 4)
    gt = torch.zeros(2, 1, 4, 4)
    pred[0] += 0.1  # sample 0: MSE 0.01 (20 dB), MAE 0.1
    pred[1] += 0.01  # sample 1: MSE 1e-4 (40 dB), MAE 0.01
    assert float(tl.psnr(pred, gt)) == pytest.approx(30.0, rel=1e-5)  # mean of per-sample PSNRs, not PSNR of mean MSE
    assert float(tl.mse(pred, gt)) == pytest.approx((0.01 + 1e-4) / 2, rel=1e-5)
    assert float(tl.mae(pred, gt)) == pytest.approx((0.1 + 0.01) / 2, rel=1e-5)


def test_ssim_of_identical_images_is_one():
    rng = np.random.default_rng(0)
    img = rng.random((32, 32))
    assert npm.ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    vol = rng.random((12, 16, 16))
    assert npm.ssim(vol, vol) == pytest.approx(1.0, abs=1e-12)
    t = torch.from_numpy(img).float()[None, None]
    assert float(tl.ssim(t, t)) == pytest.approx(1.0, abs=1e-5)


def _ssim_by_hand(x, y):
    """Direct sums over every full 11x11 window (no filtering library), the definition in seeds.md 1.3."""
    g = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    w = np.outer(g, g)
    w /= w.sum()
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            exy, ex2y2 = (w * px * py).sum(), (w * (px**2 + py**2)).sum()
            lum = (2 * mx * my + 1e-4) / (mx**2 + my**2 + 1e-4)
            cs = (2 * (exy - mx * my) + 9e-4) / (ex2y2 - mx**2 - my**2 + 9e-4)
            vals.append(lum * cs)
    return float(np.mean(vals))


def test_ssim_matches_hand_computation_on_a_small_case():
    rng = np.random.default_rng(1)
    x = rng.random((14, 13))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    expected = _ssim_by_hand(x, y)
    assert 0.3 < expected < 0.95  # a genuinely partial similarity
    # numpy's argument order is (pred, target); the formula is symmetric in the two images.
    assert npm.ssim(y, x) == pytest.approx(expected, rel=1e-10)
    t = tl.ssim(torch.from_numpy(y).float()[None, None], torch.from_numpy(x).float()[None, None])
    assert float(t) == pytest.approx(expected, rel=1e-4)


def test_ssim_3d_torch_matches_numpy():
    rng = np.random.default_rng(2)
    x = rng.random((12, 14, 15)).astype(np.float32)
    y = (0.7 * x + 0.1 + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)
    t = tl.ssim(torch.from_numpy(y)[None, None], torch.from_numpy(x)[None, None])
    assert float(t) == pytest.approx(npm.ssim(y, x), rel=1e-4)


def test_ssim_kernel_is_normalized_gaussian():
    k = tl.gaussian_kernel(2)
    assert k.shape == (11, 11) and float(k.sum()) == pytest.approx(1.0, rel=1e-6)
    assert float(k[5, 5] / k[5, 6]) == pytest.approx(math.exp(0.5 / 1.5**2), rel=1e-5)
    w = npm.gaussian_window_1d()
    np.testing.assert_allclose(np.outer(w, w), k.numpy(), rtol=1e-6)


def test_ssim_rejects_small_images():
    with pytest.raises(InputError, match="at least 11"):
        npm.ssim(np.zeros((10, 40)), np.zeros((10, 40)))


def test_fit_affine_recovers_scale_and_offset():
    rng = np.random.default_rng(3)
    pred = rng.random((20, 20))
    gt = 2.5 * pred - 0.3
    a, b = npm.fit_affine(pred, gt)
    assert (a, b) == (pytest.approx(2.5), pytest.approx(-0.3))
    # Same as 3D-RCAN's rescale: np.cov ratio.
    noisy = gt + 0.1 * rng.standard_normal(gt.shape)
    cov = np.cov(pred.ravel(), noisy.ravel())
    a2, b2 = npm.fit_affine(pred, noisy)
    assert a2 == pytest.approx(cov[0, 1] / cov[0, 0])
    assert b2 == pytest.approx(noisy.mean() - a2 * pred.mean())
    assert npm.fit_affine(np.ones((4, 4)), gt[:4, :4]) == (0.0, pytest.approx(gt[:4, :4].mean()))


def test_scale_invariant_psnr_ignores_scale_and_offset():
    rng = np.random.default_rng(4)
    clean = rng.random((64, 64)) * 200 + 10
    noisy = clean + 5 * rng.standard_normal(clean.shape)
    base = npm.scale_invariant_psnr(noisy, clean)
    assert npm.scale_invariant_psnr(3 * noisy + 40, clean) == pytest.approx(base, rel=1e-9)
    # By hand: clean to its 0.1/99.9 percentiles, least-squares fit, PSNR peak 1.
    lo, hi = np.percentile(clean, (0.1, 99.9))
    target = (clean - lo) / (hi - lo)
    a, b = np.polyfit(noisy.ravel(), target.ravel(), 1)
    mse = np.mean((a * noisy + b - target) ** 2)
    assert base == pytest.approx(10 * np.log10(1 / mse), rel=1e-9)
    assert npm.scale_invariant_psnr(clean, clean) > 100


def test_w2s_reference_numbers(data_dir):
    """The data README's numbers: raw noisy vs clean 20.5 dB mean (15.4-26.5) on the 12 W2S pairs."""
    import tifffile

    noisy = tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")
    clean = tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg400_clean.tif")
    values = [npm.scale_invariant_psnr(noisy[i], clean[i]) for i in range(len(noisy))]
    assert np.mean(values) == pytest.approx(20.5, abs=0.05)
    assert min(values) == pytest.approx(15.4, abs=0.05) and max(values) == pytest.approx(26.5, abs=0.05)


def test_metrics_refuse_bad_input():
    with pytest.raises(InputError, match="shape"):
        npm.psnr(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(InputError, match="NaN or Inf"):
        npm.psnr(np.full((4, 4), np.nan), np.zeros((4, 4)))
    with pytest.raises(InputError, match="flat"):
        npm.scale_invariant_psnr(np.zeros((4, 4)), np.ones((4, 4)))
