"""A small U-Net-like torch network, used as the architecture file of a package that bioimageio.spec writes
(not ScopeRT): the ``pytorch_state_dict`` path of ``scopert import bioimageio`` loads it the way
bioimageio.core does."""

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv -> 2x down -> conv -> 2x up -> conv: divisor 2, a local receptive field of a few pixels."""

    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, features, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(features, features, 3, padding=1), nn.ReLU(),
                                 nn.Upsample(scale_factor=2, mode="nearest"))
        self.out = nn.Conv2d(2 * features, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        return self.out(torch.cat([e, self.mid(e)], dim=1))
