"""CNNT's training losses and PSNR metric, with the seed's own (non-standard) normalizations (seeds.md 3.5).

All functions take [B, T, C=1, H, W] tensors (output, target) and return a scalar tensor:

- ``mse``:   sqrt(sum((o - t)**2)) / (B*T) / (H*W/4096)   (a root of a sum, not a mean square)
- ``l1``:    sum(|o - t|) / (B*T) / (H*W/4096)
- ``sobel``: sqrt(sum((S(o) - S(t))**2)) / (B*T) / (H*W/4096), S = per-frame gradient magnitude of the seed's
  scaled Sobel kernels (Gx = [[2,0,-2],[4,0,-4],[2,0,-2]], Gy = Gx transposed with flipped sign), zero padding 1
- ``ssim``:  1 - mean(SSIM) with a 7-tap Gaussian window (sigma 1.5), zero 'same' padding, per frame (B*T, 1, H, W)
- ``ssim3D``: the same with a 7x7x7 window over (T, H, W) on (B, 1, T, H, W)

``CombinedLoss`` is the seed's weighted sum. One deliberate difference: the Sobel magnitude takes the root of
max(gx**2 + gy**2, 1e-12) so that flat regions have a finite gradient (the seed's plain sqrt gives NaN gradients
there); the value differs by at most 1e-6 per flat pixel.

Imports torch only; must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from scopert.errors import ConfigError

SSIM_WINDOW = 7
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
AREA_UNIT = 4096.0  # the seed divides by H*W/4096
SOBEL_EPS = 1e-12
PSNR_FACTOR = -4.342944819  # 10 / ln(10), as the seed writes it

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _dims(target: torch.Tensor) -> tuple[int, int, int, int, int]:
    if target.ndim != 5:
        raise ValueError(f"CNNT losses take [B, T, C, H, W] tensors, got shape {tuple(target.shape)}")
    b, t, c, h, w = target.shape
    return b, t, c, h, w


def _norm(target: torch.Tensor) -> float:
    b, t, _, h, w = _dims(target)
    return (b * t) * (h * w / AREA_UNIT)


def mse_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed's 'mse': sqrt of the summed squared error, divided by B*T and by H*W/4096."""
    return torch.sqrt(torch.sum((output - target) ** 2)) / _norm(target)


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed's 'l1': summed absolute error, divided by B*T and by H*W/4096."""
    return torch.sum(torch.abs(output - target)) / _norm(target)


def sobel_kernels(dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
    """The seed's two 3x3 kernels as a [2, 1, 3, 3] conv weight (Gx first)."""
    gx = torch.tensor([[2.0, 0.0, -2.0], [4.0, 0.0, -4.0], [2.0, 0.0, -2.0]])
    gy = torch.tensor([[2.0, 4.0, 2.0], [0.0, 0.0, 0.0], [-2.0, -4.0, -2.0]])
    return torch.stack([gx, gy])[:, None].to(dtype=dtype, device=device)


def sobel_magnitude(frames: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of (N, 1, H, W) frames (cross-correlation, zero padding 1)."""
    g = F.conv2d(frames, sobel_kernels(frames.dtype, frames.device), padding=1)
    return torch.sqrt(torch.clamp_min(torch.sum(g * g, dim=1, keepdim=True), SOBEL_EPS))


def sobel_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed's 'sobel': sqrt of the summed squared difference of Sobel magnitudes, / (B*T) / (H*W/4096)."""
    b, t, c, h, w = _dims(target)
    so = sobel_magnitude(output.reshape(b * t * c, 1, h, w))
    st = sobel_magnitude(target.reshape(b * t * c, 1, h, w))
    return torch.sqrt(torch.sum((so - st) ** 2)) / _norm(target)


def gaussian_taps(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalized 1D Gaussian taps centred on size // 2 (float64)."""
    k = torch.arange(size, dtype=torch.float64) - size // 2
    w = torch.exp(-(k**2) / (2.0 * sigma**2))
    return w / w.sum()


def _ssim_map(x: torch.Tensor, y: torch.Tensor, ndim: int, size: int) -> torch.Tensor:
    """SSIM map of (N, 1, *spatial) tensors with a Gaussian window and zero 'same' padding."""
    taps = gaussian_taps(size)
    window = taps
    for _ in range(ndim - 1):
        window = window[..., None] * taps
    window = window.to(dtype=x.dtype, device=x.device)[None, None]
    conv = F.conv2d if ndim == 2 else F.conv3d

    def avg(a: torch.Tensor) -> torch.Tensor:
        return conv(a, window, padding=size // 2)

    mu_x, mu_y = avg(x), avg(y)
    var_x = avg(x * x) - mu_x * mu_x
    var_y = avg(y * y) - mu_y * mu_y
    cov = avg(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return num / den


def ssim_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed's 'ssim': 1 - mean SSIM over the (B*T, 1, H, W) frames (7-tap window, zero padding)."""
    b, t, c, h, w = _dims(target)
    return 1.0 - _ssim_map(output.reshape(b * t * c, 1, h, w), target.reshape(b * t * c, 1, h, w), 2,
                           SSIM_WINDOW).mean()


def ssim3d_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed's 'ssim3D': 1 - mean SSIM over (B, C, T, H, W) volumes (7x7x7 window, zero padding)."""
    _dims(target)
    o = output.permute(0, 2, 1, 3, 4)
    t = target.permute(0, 2, 1, 3, 4)
    return 1.0 - _ssim_map(o, t, 3, SSIM_WINDOW).mean()


def psnr(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed's PSNR metric: -4.342944819 * ln(mean((t - o)**2)) (peak 1)."""
    return PSNR_FACTOR * torch.log(torch.mean((target - output) ** 2))


def psnr_clipped(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR after clipping the output to [0, 1], as the seed reports validation metrics."""
    return psnr(torch.clamp(output, 0.0, 1.0), target)


LOSSES: dict[str, LossFn] = {
    "mse": mse_loss,
    "l1": l1_loss,
    "sobel": sobel_loss,
    "ssim": ssim_loss,
    "ssim3D": ssim3d_loss,
}


@dataclass
class CombinedLoss:
    """The seed's Image_Enhancement_Combined_Loss: sum of weight * loss over the named losses."""

    names: tuple[str, ...]
    weights: tuple[float, ...]

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = None
        for name, weight in zip(self.names, self.weights):
            term = weight * LOSSES[name](output, target)
            total = term if total is None else total + term
        assert total is not None
        return total


def combined_loss(names: Sequence[str], weights: Sequence[float] | None = None) -> CombinedLoss:
    """Build the combined loss; every name must be one of LOSSES and weights (default 1.0) must match."""
    names = [str(n) for n in (names if not isinstance(names, str) else [names])]
    if not names:
        raise ConfigError(f"loss is empty; name at least one of {', '.join(LOSSES)}, e.g. [\"mse\", \"ssim\"].")
    unknown = [n for n in names if n not in LOSSES]
    if unknown:
        raise ConfigError(f"unknown CNNT loss {unknown[0]!r}; use any of {', '.join(LOSSES)} (ssim3D is case-sensitive).")
    if weights is None:
        weights = [1.0] * len(names)
    weights = [float(w) for w in weights]
    if len(weights) != len(names):
        raise ConfigError(
            f"loss names {names} and loss_weights {weights} differ in length ({len(names)} vs {len(weights)}); "
            "give one weight per loss."
        )
    return CombinedLoss(tuple(names), tuple(weights))
