"""Image-quality metrics in numpy: PSNR, the 3D-RCAN SSIM, scale-invariant PSNR and affine fitting.

These are the numbers reports and tests quote for restored images. They work on whole 2D (YX) or 3D (ZYX)
arrays, with no batch or channel axis. Imports only numpy and scipy: never torch or onnx, so the
runtime-free report code can use them. The training-time (torch) twins live in
``scopert.training.rcan.losses`` and follow the same definitions.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from scopert.errors import InputError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """10*log10(data_range**2 / MSE); the 3D-RCAN metric uses peak 1 (images are percentile-normalized)."""
    pred, target = _pair(pred, target)
    mse = float(np.mean((pred - target) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalized 1D Gaussian taps of the 3D-RCAN SSIM (centred at size//2)."""
    k = np.arange(size, dtype=np.float64) - size // 2
    w = np.exp(-0.5 * (k / sigma) ** 2)
    return w / w.sum()


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """SSIM exactly as 3D-RCAN trains with it: peak 1, no data-range scaling.

    A separable 11-tap Gaussian (sigma 1.5) over every axis (2D or 3D), *valid* filtering (the output shrinks
    by 10 per axis, no padding), c1 = 0.01**2, c2 = 0.03**2, and the mean of luminance * contrast-structure.
    Every axis must be at least 11 long.
    """
    pred, target = _pair(pred, target)
    if pred.ndim not in (2, 3):
        raise InputError(f"ssim works on 2D (YX) or 3D (ZYX) images, got shape {pred.shape}. Pass one image at a time.")
    if min(pred.shape) < SSIM_WINDOW:
        raise InputError(
            f"ssim needs every axis to be at least {SSIM_WINDOW} long (valid {SSIM_WINDOW}-tap window); "
            f"got shape {pred.shape}. Use a larger crop."
        )
    ux, uy = _gauss_valid(target), _gauss_valid(pred)
    a = ux * uy
    b = ux**2 + uy**2
    c = _gauss_valid(target * pred)
    d = _gauss_valid(target**2 + pred**2)
    lum = (2 * a + SSIM_C1) / (b + SSIM_C1)
    cs = (2 * (c - a) + SSIM_C2) / (d - b + SSIM_C2)
    return float(np.mean(lum * cs))


def fit_affine(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Least-squares a, b such that a*pred + b is closest to target (3D-RCAN ``apply.py --rescale``).

    a = cov(pred, target) / var(pred), b = mean(target) - a*mean(pred). A constant prediction gives a = 0.
    """
    pred, target = _pair(pred, target)
    p, t = pred.ravel(), target.ravel()
    pm, tm = p.mean(), t.mean()
    var = float(np.mean((p - pm) ** 2))
    a = 0.0 if var == 0.0 else float(np.mean((p - pm) * (t - tm)) / var)
    return a, float(tm - a * pm)


def scale_invariant_psnr(pred: np.ndarray, clean: np.ndarray, pmin: float = 0.1, pmax: float = 99.9) -> float:
    """PSNR (peak 1) after removing intensity scale and offset, for pairs that share no intensity scale.

    The clean image is normalized to its 0.1/99.9 percentiles; the prediction is fitted to it by least squares
    (``fit_affine``); then PSNR with peak 1. Used for the W2S 8-bit pairs, each of which was contrast-stretched
    on its own.
    """
    pred, clean = _pair(pred, clean)
    low, high = np.percentile(clean, (pmin, pmax))
    if high <= low:
        raise InputError(
            f"scale_invariant_psnr: the clean image is flat between its {pmin} and {pmax} percentiles "
            f"({low} .. {high}); pass a reference image with contrast."
        )
    target = (clean - low) / (high - low)
    a, b = fit_affine(pred, target)
    return psnr(a * pred + b, target)


def _gauss_valid(img: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter keeping only the fully-overlapping ('valid') part."""
    w = gaussian_window_1d()
    half = SSIM_WINDOW // 2
    out = img
    for axis in range(img.ndim):
        out = ndimage.correlate1d(out, w, axis=axis, mode="constant")
    return out[(slice(half, -half),) * img.ndim]


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise InputError(
            f"prediction shape {pred.shape} differs from reference shape {target.shape}; compare images of equal shape."
        )
    if pred.size == 0:
        raise InputError("cannot compute a metric on empty images.")
    if not (np.isfinite(pred).all() and np.isfinite(target).all()):
        raise InputError("an image holds NaN or Inf values; fix the input (or the model output) before measuring it.")
    return pred, target
