"""TA-GAN's losses, weight init and LR schedule, as the seed defines them (seeds.md 2.3).

- ``gan_loss``: the seed's GANLoss; ``vanilla`` (BCE with logits against all-ones / all-zeros targets, the mode
  every TA-GAN model uses) or ``lsgan`` (MSE against the same targets).
- ``discriminator_loss``: ``0.5 * (GAN(D([x, fake]), 0) + GAN(D([x, real]), 1)) * lambda_GAN`` (conditional D).
- ``segmentation_loss``: ``MSE(S(image), seg) * lambda_seg`` (S ends in Tanh, seg targets are in [-1, 1]).
- ``init_weights_normal``: conv and linear weights ~ N(0, gain), biases 0; BatchNorm weights ~ N(1, gain), bias 0.
- ``linear_lr_lambda``: ``1 - max(0, e + epoch_count - niter) / (niter_decay + 1)``, stepped once per epoch.

Imports torch only; must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

GAN_MODES = ("vanilla", "lsgan")


def gan_loss(prediction: torch.Tensor, target_is_real: bool, mode: str = "vanilla") -> torch.Tensor:
    """The seed's GANLoss: compare D's logits with a target tensor of ones (real) or zeros (fake)."""
    target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
    if mode == "vanilla":
        return nn.functional.binary_cross_entropy_with_logits(prediction, target)
    if mode == "lsgan":
        return nn.functional.mse_loss(prediction, target)
    raise ValueError(f"unknown gan_mode {mode!r}; use one of {GAN_MODES}")


def discriminator_loss(net_d: nn.Module, condition: torch.Tensor, fake: torch.Tensor, real: torch.Tensor,
                       lambda_gan: float = 1.0, mode: str = "vanilla") -> torch.Tensor:
    """Conditional PatchGAN loss for D; ``fake`` is detached so that no gradient reaches G."""
    pred_fake = net_d(torch.cat([condition, fake.detach()], 1))
    pred_real = net_d(torch.cat([condition, real], 1))
    return 0.5 * (gan_loss(pred_fake, False, mode) + gan_loss(pred_real, True, mode)) * lambda_gan


def generator_gan_loss(net_d: nn.Module, condition: torch.Tensor, fake: torch.Tensor, lambda_gan: float = 1.0,
                       mode: str = "vanilla") -> torch.Tensor:
    """G's adversarial term: D should call ``[condition, fake]`` real."""
    return gan_loss(net_d(torch.cat([condition, fake], 1)), True, mode) * lambda_gan


def segmentation_loss(seg_pred: torch.Tensor, seg_target: torch.Tensor, lambda_seg: float = 1.0) -> torch.Tensor:
    """The seed's segmentation loss: MSE between S's Tanh output and the [-1, 1] labels, times lambda_seg."""
    return nn.functional.mse_loss(seg_pred, seg_target) * lambda_seg


def init_weights_normal(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """The seed's ``init_weights(init_type='normal')``: Conv*/Linear weights ~ N(0, gain), BatchNorm2d weights
    ~ N(1, gain), every bias 0. Affine-free norms have no weights and are left alone."""

    def init(m: nn.Module) -> None:
        name = type(m).__name__
        if hasattr(m, "weight") and m.weight is not None and ("Conv" in name or "Linear" in name):
            nn.init.normal_(m.weight, 0.0, gain)
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias, 0.0)
        elif "BatchNorm2d" in name and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.constant_(m.bias, 0.0)

    net.apply(init)
    return net


def linear_lr_lambda(niter: int, niter_decay: int, epoch_count: int = 1) -> Callable[[int], float]:
    """The seed's 'linear' LR policy for ``LambdaLR``: constant for ``niter`` epochs, then linear decay."""

    def rule(epoch: int) -> float:
        return 1.0 - max(0, epoch + epoch_count - niter) / float(niter_decay + 1)

    return rule
