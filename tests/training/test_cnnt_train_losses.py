"""CNNT losses against hand computation (numpy / scipy, written out independently) on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from scopert.errors import ConfigError
from scopert.training.cnnt import losses as L


def _pair(shape=(2, 3, 1, 8, 9), seed=0):
    rng = np.random.default_rng(seed)
    o = rng.random(shape)
    t = np.clip(o + rng.normal(0, 0.2, shape), 0, 1)
    return o, t


def _t(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def test_mse_and_l1_use_the_seeds_root_sum_and_area_normalization():
    o = np.zeros((1, 2, 1, 2, 2))
    t = np.ones((1, 2, 1, 2, 2))
    # sqrt(8 squared errors of 1) / (B*T=2) / (H*W/4096 = 4/4096)
    assert float(L.mse_loss(_t(o), _t(t))) == pytest.approx(math.sqrt(8) / 2 / (4 / 4096))
    assert float(L.l1_loss(_t(o), _t(t))) == pytest.approx(8 / 2 / (4 / 4096))
    o, t = _pair()
    b, tt, _, h, w = o.shape
    assert float(L.mse_loss(_t(o), _t(t))) == pytest.approx(np.sqrt(((o - t) ** 2).sum()) / (b * tt) / (h * w / 4096))
    assert float(L.l1_loss(_t(o), _t(t))) == pytest.approx(np.abs(o - t).sum() / (b * tt) / (h * w / 4096))


def _sobel_hand(frame):
    gx = np.array([[2, 0, -2], [4, 0, -4], [2, 0, -2]], float)
    gy = np.array([[2, 4, 2], [0, 0, 0], [-2, -4, -2]], float)
    p = np.pad(frame, 1)
    h, w = frame.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            win = p[i : i + 3, j : j + 3]
            out[i, j] = math.hypot((win * gx).sum(), (win * gy).sum())
    return out


def test_sobel_loss_equals_hand_computation():
    o, t = _pair((1, 2, 1, 6, 7), seed=1)
    so = np.stack([_sobel_hand(o[0, k, 0]) for k in range(2)])
    st = np.stack([_sobel_hand(t[0, k, 0]) for k in range(2)])
    want = np.sqrt(((so - st) ** 2).sum()) / 2 / (42 / 4096)
    assert float(L.sobel_loss(_t(o), _t(t))) == pytest.approx(want, rel=1e-9)
    # a vertical step: the seed's kernels give |Gx| = 2+4+2 = 8 per unit step at the edge pixels
    step = np.zeros((5, 6))
    step[:, 3:] = 1.0
    mag = L.sobel_magnitude(_t(step)[None, None])[0, 0].numpy()
    assert mag[2, 2] == pytest.approx(8.0) and mag[2, 3] == pytest.approx(8.0) and mag[2, 0] == pytest.approx(1e-6)


def _ssim_hand(x, y, ndim):
    k = np.arange(7) - 3
    g = np.exp(-(k**2) / (2 * 1.5**2))
    g /= g.sum()
    win = g
    for _ in range(ndim - 1):
        win = np.multiply.outer(win, g)

    def avg(a):
        return ndimage.correlate(a, win, mode="constant", cval=0.0)

    mx, my = avg(x), avg(y)
    vx, vy, cxy = avg(x * x) - mx**2, avg(y * y) - my**2, avg(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def test_ssim_2d_per_frame_with_zero_padding_equals_hand_computation():
    o, t = _pair((2, 2, 1, 9, 10), seed=2)
    maps = [_ssim_hand(o[b, k, 0], t[b, k, 0], 2) for b in range(2) for k in range(2)]
    want = 1.0 - np.mean(maps)
    got = float(L.ssim_loss(_t(o), _t(t)))
    assert got == pytest.approx(want, abs=1e-10)
    assert 0.05 < got < 1.0
    assert float(L.ssim_loss(_t(t), _t(t))) == pytest.approx(0.0, abs=1e-12)


def test_ssim3d_over_time_equals_hand_computation():
    o, t = _pair((2, 5, 1, 8, 8), seed=3)
    maps = [_ssim_hand(o[b, :, 0], t[b, :, 0], 3) for b in range(2)]
    want = 1.0 - np.mean(maps)
    got = float(L.ssim3d_loss(_t(o), _t(t)))
    assert got == pytest.approx(want, abs=1e-10)
    assert abs(got - float(L.ssim_loss(_t(o), _t(t)))) > 1e-3  # the time window matters


def test_psnr_and_combined_weights():
    o, t = _pair()
    mse = ((o - t) ** 2).mean()
    assert float(L.psnr(_t(o), _t(t))) == pytest.approx(-4.342944819 * math.log(mse))
    assert float(L.psnr_clipped(_t(o + 2.0), _t(t))) == pytest.approx(-4.342944819 * math.log(((1 - t) ** 2).mean()))
    loss = L.combined_loss(["mse", "ssim", "l1"], [0.1, 1.0, 0.5])
    want = 0.1 * L.mse_loss(_t(o), _t(t)) + L.ssim_loss(_t(o), _t(t)) + 0.5 * L.l1_loss(_t(o), _t(t))
    assert float(loss(_t(o), _t(t))) == pytest.approx(float(want))
    assert L.combined_loss(["sobel"]).weights == (1.0,)


def test_sobel_gradient_is_finite_on_flat_frames():
    o = torch.full((1, 2, 1, 8, 8), 0.5, dtype=torch.float64, requires_grad=True)
    t = torch.rand(1, 2, 1, 8, 8, dtype=torch.float64)
    L.sobel_loss(o, t).backward()
    assert torch.isfinite(o.grad).all()


def test_bad_loss_names_and_weights_are_named():
    with pytest.raises(ConfigError, match="unknown CNNT loss 'ssim3d'"):
        L.combined_loss(["ssim3d"])
    with pytest.raises(ConfigError, match="differ in length"):
        L.combined_loss(["mse", "ssim"], [1.0])
