"""Receptive-field measurement: exact halos for local nets, global operations flagged, probes that grow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scopert.errors import ConfigError
from scopert.export.receptive_field import measure_halo, measure_receptive_field


def conv_stack(n: int, ndim: int = 2, kernel=3, dilation=1, channels: int = 8) -> nn.Sequential:
    """n convolutions with 'same' padding and ReLUs between them."""
    conv = nn.Conv2d if ndim == 2 else nn.Conv3d
    k = (kernel,) * ndim if isinstance(kernel, int) else tuple(kernel)
    pad = tuple(dilation * (s // 2) for s in k)
    layers: list[nn.Module] = []
    for i in range(n):
        c_in = 1 if i == 0 else channels
        c_out = 1 if i == n - 1 else channels
        layers.append(conv(c_in, c_out, k, padding=pad, dilation=dilation))
        if i < n - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class GlobalGate(nn.Module):
    """A 3-conv stack gated by a squeeze-and-excitation over the whole tile (like RCAN's channel attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = conv_stack(3)
        self.fc = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y * torch.sigmoid(self.fc(y.mean(dim=(2, 3), keepdim=True)))


class Normed(nn.Module):
    """conv -> InstanceNorm over the tile -> conv: tile-variant."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.norm = nn.InstanceNorm2d(8)
        self.b = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.norm(self.a(x))))


class PoolNet(nn.Module):
    """conv, 2x average pool, conv, 2x nearest upsample, conv: the field depends on the position mod 2."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.avg_pool2d(torch.relu(self.a(x)), 2)
        y = nn.functional.interpolate(torch.relu(self.b(y)), scale_factor=2, mode="nearest")
        return self.c(y)


class TimeToChannels(nn.Module):
    """A 2D+t model: [B,T,C,Y,X] -> frames stacked as channels -> two convs -> [B,C,Y,X]."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(frames, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x.flatten(1, 2))))


@pytest.mark.parametrize("layers", [1, 3, 6])
def test_conv_stack_halo_is_number_of_layers(layers):
    torch.manual_seed(layers)
    rf = measure_receptive_field(conv_stack(layers), (1, 1, 8, 8), "bcyx")
    assert rf.halo == {"y": layers, "x": layers}
    assert not rf.global_dependency and rf.tile_invariant
    assert rf.threshold == 0.0


def test_probe_grows_when_the_field_reaches_its_border():
    torch.manual_seed(1)
    rf = measure_receptive_field(conv_stack(12), (1, 1, 8, 8), "bcyx")
    assert rf.halo == {"y": 12, "x": 12}
    assert rf.probe_shapes["y"][2] > 2 * 12 + 1  # grew from 8 along y only
    assert rf.probe_shapes["y"][3] == 8


@pytest.mark.parametrize("dilation,layers", [(2, 3), (3, 2)])
def test_dilated_convs(dilation, layers):
    torch.manual_seed(dilation)
    assert measure_halo(conv_stack(layers, dilation=dilation), (1, 1, 8, 8), "bcyx") == {
        "y": layers * dilation, "x": layers * dilation}


def test_anisotropic_3d_kernels_give_zero_z_halo():
    torch.manual_seed(3)
    rf = measure_receptive_field(conv_stack(3, ndim=3, kernel=(1, 3, 3)), (1, 1, 4, 4, 4), "bczyx")
    assert rf.halo == {"z": 0, "y": 3, "x": 3}
    assert not rf.global_dependency


def test_global_pooling_is_flagged_and_local_radius_kept():
    torch.manual_seed(4)
    rf = measure_receptive_field(GlobalGate(), (1, 1, 8, 8), "bcyx", max_length=256)
    assert rf.global_dependency and not rf.tile_invariant
    assert rf.global_axes == "yx"
    # the local part is the 3-conv stack; the far-field level is ~1/N of the peak
    assert all(2 <= h <= 3 for h in rf.halo.values()), rf.halo
    assert 0 < rf.threshold < 1e-2
    assert all(0 < f < rf.threshold for f in rf.far_field.values())


def test_instance_norm_is_flagged():
    torch.manual_seed(5)
    rf = measure_receptive_field(Normed(), (1, 1, 8, 8), "bcyx", max_length=128)
    assert rf.global_dependency
    assert all(h <= 2 for h in rf.halo.values())


def test_pooling_net_halo_is_sufficient_and_tight_at_every_phase():
    """Changing input beyond the halo never changes an output; at distance == halo it does for some phase."""
    torch.manual_seed(6)
    net = PoolNet().double().eval()
    halo = measure_receptive_field(net, (1, 1, 8, 8), "bcyx", divisor={"y": 2, "x": 2}).halo
    assert halo["y"] == halo["x"]
    h = halo["y"]
    assert 3 <= h <= 6  # 1 + 2*1 + 1 structural, +1 for the pooling phase
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 48, 48, generator=gen, dtype=torch.float64)
    base = net(x)
    reached = False
    for p in range(20, 24):  # every phase mod 2 (and mod 4)
        far = x.clone()
        far[..., p + h + 1:, :] += 1.0
        far[..., : p - h, :] += 1.0
        assert torch.allclose(net(far)[..., p, :], base[..., p, :], rtol=0, atol=1e-12)
        edge = x.clone()
        edge[..., p + h, :] += 1.0
        edge[..., p - h, :] += 1.0
        reached |= bool((net(edge)[..., p, :] - base[..., p, :]).abs().max() > 1e-9)
    assert reached


def test_time_axis_model_measures_spatial_axes_only():
    torch.manual_seed(7)
    rf = measure_receptive_field(TimeToChannels(3), (1, 3, 1, 8, 8), "btcyx", output_axes="bcyx")
    assert rf.halo == {"y": 2, "x": 2}


def test_bad_probe_shape_is_a_config_error():
    with pytest.raises(ConfigError, match="one size per axis"):
        measure_halo(conv_stack(2), (1, 8, 8), "bcyx")
