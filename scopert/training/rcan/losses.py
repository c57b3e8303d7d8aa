"""Training losses and metrics in torch, defined as 3D-RCAN defines them (seeds.md section 1.3).

Tensors are channels-first batches, (N, C, Y, X) or (N, C, Z, Y, X). Every function reduces per sample
first and then averages over the batch, as Keras does. The numpy twins for reports are in
``scopert.metrics``. Must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from scopert.errors import ConfigError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per sample, then the batch mean."""
    return _per_sample((pred - target).abs()).mean(dim=1).mean()


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample, then the batch mean."""
    return _per_sample((pred - target) ** 2).mean(dim=1).mean()


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """10*log10(1/MSE) per sample (peak 1), then the batch mean."""
    per = _per_sample((pred - target) ** 2).mean(dim=1)
    return (-10.0 * torch.log10(per)).mean()


def gaussian_kernel(ndim: int, size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """The normalized ``ndim``-D Gaussian (outer product of 1D taps), as 3D-RCAN builds it with einsum."""
    k = torch.arange(size, dtype=torch.float64) - size // 2
    w = torch.exp(-0.5 * (k / sigma) ** 2)
    kernel = w
    for _ in range(ndim - 1):
        kernel = kernel[..., None] * w
    return (kernel / kernel.sum()).float()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """3D-RCAN's SSIM: 11-tap Gaussian (sigma 1.5) per channel, valid convolution, c1=.01**2, c2=.03**2.

    Returns the batch mean of the per-sample mean of luminance * contrast-structure. Every spatial axis must
    be at least 11 long.
    """
    ndim = pred.ndim - 2
    if ndim not in (2, 3):
        raise ValueError(f"ssim needs (N,C,Y,X) or (N,C,Z,Y,X) tensors, got shape {tuple(pred.shape)}")
    channels = pred.shape[1]
    kernel = gaussian_kernel(ndim).to(device=pred.device, dtype=pred.dtype)
    kernel = kernel.expand(channels, 1, *kernel.shape).contiguous()
    conv = F.conv2d if ndim == 2 else F.conv3d

    def average(x: torch.Tensor) -> torch.Tensor:
        return conv(x, kernel, groups=channels)

    ux, uy = average(target), average(pred)
    a = ux * uy
    b = ux**2 + uy**2
    c = average(target * pred)
    d = average(target**2 + pred**2)
    lum = (2 * a + SSIM_C1) / (b + SSIM_C1)
    cs = (2 * (c - a) + SSIM_C2) / (d - b + SSIM_C2)
    return _per_sample(lum * cs).mean(dim=1).mean()


LOSSES: dict[str, LossFn] = {"mae": mae, "mse": mse}
METRICS: dict[str, LossFn] = {"psnr": psnr, "ssim": ssim}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}.")
    return LOSSES[name]


def get_metrics(names: list[str]) -> dict[str, LossFn]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r}; use any of {', '.join(METRICS)}.")
    return {n: METRICS[n] for n in names}
