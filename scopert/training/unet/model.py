"""The ``unet`` family: pytorch-3dunet's UNet3D, ResidualUNet3D and UNet2D (flavell-lab fork, old wolny API).

Module and parameter names follow the seed so that its ``model_state_dict`` loads strictly, e.g.
``encoders.0.basic_module.SingleConv1.groupnorm.weight``, ``decoders.2.upsampling.upsample.weight`` (residual
variant) and ``final_conv.weight``. The model returns logits during training; the final Sigmoid/Softmax(dim=1) is
applied when ``testing`` is set (as the seed's predictor does) and always inside the exported module.

Imports torch and ``scopert.training.common.registry``; must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scopert.errors import ConfigError
from scopert.training.common.registry import Family, register


ARCHITECTURES = ("UNet3D", "ResidualUNet3D", "UNet2D")
_LAYER_CHARS = set("cgbrle")
# Typical tile (z, y, x) before rounding up to the divisor; the seed's configs use patches of this order.
_DEFAULT_TILE_3D = {"z": 64, "y": 128, "x": 128}
_DEFAULT_TILE_2D = {"y": 256, "x": 256}


@dataclass
class UNetConfig:
    """The architecture of one U-Net, as pytorch-3dunet's YAML ``model:`` section states it.

    ``num_levels`` None means the seed's class default (4, or 5 for ResidualUNet3D). ``default_tile`` optionally
    overrides the tile the card proposes (axis letter -> size; rounded up to the divisor).
    """

    name: str
    in_channels: int
    out_channels: int
    f_maps: int | list[int] = 64
    layer_order: str = "gcr"
    num_groups: int = 8
    num_levels: int | None = None
    final_sigmoid: bool = True
    is_segmentation: bool = True
    default_tile: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "unet model config") -> "UNetConfig":
        """Build and validate; unknown or missing keys are named in a ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a mapping of architecture keys, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}. Known keys: {', '.join(sorted(known))}.")
        for key in ("name", "in_channels", "out_channels"):
            if key not in data:
                raise ConfigError(f"{where}: the key {key!r} is missing; add it (e.g. name: UNet3D, in_channels: 1).")
        cfg = cls(**data)
        cfg.validate(where)
        return cfg

    @property
    def levels(self) -> int:
        if isinstance(self.f_maps, (list, tuple)):
            return len(self.f_maps)
        if self.num_levels is not None:
            return int(self.num_levels)
        return 5 if self.name == "ResidualUNet3D" else 4

    @property
    def feature_maps(self) -> list[int]:
        """Channels per level: ``f * 2**k`` for an int ``f_maps`` (the seed's number_of_features_per_level)."""
        if isinstance(self.f_maps, (list, tuple)):
            return [int(f) for f in self.f_maps]
        return [int(self.f_maps) * 2**k for k in range(self.levels)]

    @property
    def is_2d(self) -> bool:
        return self.name == "UNet2D"

    @property
    def divisor(self) -> int:
        return 2 ** (self.levels - 1)

    def validate(self, where: str = "unet model config") -> None:
        if self.name not in ARCHITECTURES:
            raise ConfigError(f"{where}: name {self.name!r} is not a supported U-Net; use one of {', '.join(ARCHITECTURES)}.")
        for key in ("in_channels", "out_channels", "num_groups"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}.")
        if isinstance(self.f_maps, (list, tuple)):
            if self.num_levels is not None and int(self.num_levels) != len(self.f_maps):
                raise ConfigError(
                    f"{where}: f_maps lists {len(self.f_maps)} levels but num_levels is {self.num_levels}; "
                    "drop num_levels or make them agree."
                )
            if any(not isinstance(f, int) or f < 1 for f in self.f_maps):
                raise ConfigError(f"{where}: f_maps must hold positive integers, got {self.f_maps!r}.")
        elif not isinstance(self.f_maps, int) or isinstance(self.f_maps, bool) or self.f_maps < 1:
            raise ConfigError(f"{where}: f_maps must be a positive integer or a list of them, got {self.f_maps!r}.")
        if self.levels < 2:
            raise ConfigError(f"{where}: a U-Net needs num_levels >= 2, got {self.levels}.")
        order = self.layer_order
        if not isinstance(order, str) or "c" not in order or set(order) - _LAYER_CHARS:
            raise ConfigError(
                f"{where}: layer_order {order!r} is invalid; it must contain 'c' and only the letters "
                "c (conv), g (GroupNorm), b (BatchNorm), r (ReLU), l (LeakyReLU), e (ELU), e.g. 'gcr'."
            )
        if order[0] in "rle":
            raise ConfigError(f"{where}: layer_order {order!r} may not start with a non-linearity; e.g. use 'gcr' or 'cbr'.")
        for ax, size in self.default_tile.items():
            if ax not in self.spatial_axes or int(size) < 1:
                raise ConfigError(f"{where}: default_tile[{ax!r}] = {size} is invalid (axes {self.spatial_axes!r}, >= 1).")

    @property
    def spatial_axes(self) -> str:
        return "yx" if self.is_2d else "zyx"


# ---- building blocks (names as in the seed) ------------------------------------------------------------------


class SingleConv(nn.Sequential):
    """One conv with optional GroupNorm/BatchNorm and a non-linearity, in the order the ``order`` string gives.

    A norm letter before 'c' normalizes the conv's input channels, after 'c' its output channels. The conv has a bias
    only when the order has no norm (a norm right after would cancel it). GroupNorm falls back to one group when
    there are fewer channels than groups, which is why the first encoder GroupNorm normalizes the whole patch.
    """

    def __init__(self, in_channels: int, out_channels: int, order: str, num_groups: int,
                 kernel_size: Any = 3, padding: Any = 1) -> None:
        super().__init__()
        conv_at = order.index("c")
        for i, char in enumerate(order):
            channels = in_channels if i < conv_at else out_channels
            if char == "c":
                bias = not ("g" in order or "b" in order)
                self.add_module("conv", nn.Conv3d(in_channels, out_channels, kernel_size, padding=padding, bias=bias))
            elif char == "g":
                groups = 1 if channels < num_groups else num_groups
                if channels % groups:
                    raise ConfigError(
                        f"GroupNorm: {channels} channels are not divisible by num_groups={groups}; choose num_groups "
                        "that divides every level's channel count (f_maps * 2**k)."
                    )
                self.add_module("groupnorm", nn.GroupNorm(num_groups=groups, num_channels=channels))
            elif char == "b":
                self.add_module("batchnorm", nn.BatchNorm3d(channels))
            elif char == "r":
                self.add_module("ReLU", nn.ReLU())
            elif char == "l":
                self.add_module("LeakyReLU", nn.LeakyReLU(negative_slope=0.1))
            elif char == "e":
                self.add_module("ELU", nn.ELU())


class DoubleConv(nn.Sequential):
    """Two SingleConvs. Encoder: in -> max(out//2, in) -> out. Decoder: in -> out -> out."""

    def __init__(self, in_channels: int, out_channels: int, encoder: bool, order: str, num_groups: int,
                 kernel_size: Any = 3, padding: Any = 1) -> None:
        super().__init__()
        if encoder:
            mid = max(out_channels // 2, in_channels)
        else:
            mid = out_channels
        self.add_module("SingleConv1", SingleConv(in_channels, mid, order, num_groups, kernel_size, padding))
        self.add_module("SingleConv2", SingleConv(mid, out_channels, order, num_groups, kernel_size, padding))


def _nonlinearity(order: str) -> nn.Module:
    if "l" in order:
        return nn.LeakyReLU(negative_slope=0.1)
    if "e" in order:
        return nn.ELU()
    return nn.ReLU()


class ExtResNetBlock(nn.Module):
    """conv1 sets the channel count; conv2 -> conv3 (no non-linearity) is added to conv1's output, then activated."""

    def __init__(self, in_channels: int, out_channels: int, encoder: bool, order: str, num_groups: int,
                 kernel_size: Any = 3, padding: Any = 1) -> None:
        super().__init__()
        del encoder  # same layout on both paths, as in the seed
        self.conv1 = SingleConv(in_channels, out_channels, order, num_groups, kernel_size, padding)
        self.conv2 = SingleConv(out_channels, out_channels, order, num_groups, kernel_size, padding)
        linear_order = "".join(c for c in order if c not in "rle")
        self.conv3 = SingleConv(out_channels, out_channels, linear_order, num_groups, kernel_size, padding)
        self.non_linearity = _nonlinearity(order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv1(x)
        out = self.conv3(self.conv2(residual))
        return self.non_linearity(out + residual)


class Encoder(nn.Module):
    """Optional max pooling, then the basic module."""

    def __init__(self, basic_module: nn.Module, pool_kernel: Any | None) -> None:
        super().__init__()
        self.pooling = nn.MaxPool3d(kernel_size=pool_kernel) if pool_kernel is not None else None
        self.basic_module = basic_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling is not None:
            x = self.pooling(x)
        return self.basic_module(x)


class Upsampling(nn.Module):
    """Nearest interpolation to the skip's size, or a ConvTranspose3d (k 3, padding 1) sized to the skip."""

    def __init__(self, transposed: bool, in_channels: int, out_channels: int, kernel_size: Any, stride: Any) -> None:
        super().__init__()
        self.transposed = transposed
        if transposed:
            self.upsample = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=1)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        size = skip.shape[2:]
        if self.transposed:
            return self.upsample(x, output_size=size)
        return F.interpolate(x, size=size, mode="nearest")


class Decoder(nn.Module):
    """Upsample, join with the skip (concat for DoubleConv, sum for ExtResNetBlock), then the basic module."""

    def __init__(self, upsampling: Upsampling, basic_module: nn.Module, concat: bool) -> None:
        super().__init__()
        self.upsampling = upsampling
        self.basic_module = basic_module
        self.concat = concat

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.upsampling(skip, x)
        x = torch.cat((skip, x), dim=1) if self.concat else skip + x
        return self.basic_module(x)


class UNet(nn.Module):
    """pytorch-3dunet's Abstract3DUNet (NCDHW). UNet2D uses (1,3,3) convs and (1,2,2) pooling and also accepts NCHW."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        self.testing = False
        residual = cfg.name == "ResidualUNet3D"
        block = ExtResNetBlock if residual else DoubleConv
        if cfg.is_2d:
            kernel, pool, padding = (1, 3, 3), (1, 2, 2), (0, 1, 1)
        else:
            kernel, pool, padding = 3, 2, 1
        fmaps = cfg.feature_maps
        order, groups = cfg.layer_order, cfg.num_groups

        self.encoders = nn.ModuleList()
        for i, out_ch in enumerate(fmaps):
            in_ch = cfg.in_channels if i == 0 else fmaps[i - 1]
            self.encoders.append(
                Encoder(block(in_ch, out_ch, True, order, groups, kernel, padding), None if i == 0 else pool)
            )
        self.decoders = nn.ModuleList()
        rev = list(reversed(fmaps))
        for i in range(len(rev) - 1):
            out_ch = rev[i + 1]
            if residual:
                up = Upsampling(True, rev[i], out_ch, kernel, pool)
                basic = block(out_ch, out_ch, False, order, groups, kernel, padding)
            else:
                up = Upsampling(False, rev[i], out_ch, kernel, pool)
                basic = block(rev[i] + out_ch, out_ch, False, order, groups, kernel, padding)
            self.decoders.append(Decoder(up, basic, concat=not residual))
        self.final_conv = nn.Conv3d(fmaps[0], cfg.out_channels, 1)
        self.final_activation = final_activation(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = self.config.is_2d and x.dim() == 4
        if squeeze:
            x = x.unsqueeze(2)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.insert(0, x)
        for decoder, skip in zip(self.decoders, skips[1:]):
            x = decoder(skip, x)
        x = self.final_conv(x)
        if self.testing and self.final_activation is not None:
            x = self.final_activation(x)
        return x.squeeze(2) if squeeze else x


def final_activation(cfg: UNetConfig) -> nn.Module | None:
    """Sigmoid or Softmax over channels for segmentation nets; None for regression (is_segmentation false)."""
    if not cfg.is_segmentation:
        return None
    return nn.Sigmoid() if cfg.final_sigmoid else nn.Softmax(dim=1)


class UNetInference(nn.Module):
    """What export traces: the U-Net with its final activation inside, on ``bczyx`` (or ``bcyx`` for UNet2D)."""

    def __init__(self, model: UNet) -> None:
        super().__init__()
        self.model = model
        self.activation = final_activation(model.config) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        was_testing = self.model.testing
        self.model.testing = False
        try:
            y = self.model(x)
        finally:
            self.model.testing = was_testing
        return self.activation(y)


# ---- family hooks ---------------------------------------------------------------------------------------------


def build_model(model_config: dict) -> UNet:
    return UNet(UNetConfig.from_dict(dict(model_config)))


def card_fields(model_config: dict) -> dict:
    """Card fields the architecture fixes. Global min-max to [-1, 1] as the seed's Normalize transform."""
    cfg = UNetConfig.from_dict(dict(model_config))
    axes = "bcyx" if cfg.is_2d else "bczyx"
    d = cfg.divisor
    base = dict(_DEFAULT_TILE_2D if cfg.is_2d else _DEFAULT_TILE_3D)
    base.update({k: int(v) for k, v in cfg.default_tile.items()})
    tile = {ax: -(-size // d) * d for ax, size in base.items()}
    return {
        "input": {"name": "input", "axes": axes, "dtype": "float32", "channels": cfg.in_channels,
                  "divisor": {ax: d for ax in cfg.spatial_axes}},
        "output": {"name": "output", "axes": axes, "dtype": "float32", "channels": cfg.out_channels},
        "normalization": {"kind": "minmax", "symmetric": True, "clip": True},
        # the exported graph ends in the final activation: its outputs are probabilities (the INT8 gate judges
        # them by the Dice change of this mask)
        "postprocess": {"segmentation": True, "activation": "sigmoid" if cfg.final_sigmoid else "softmax",
                        "threshold": 0.5} if cfg.is_segmentation else {},
        "tile_invariant": False,
        "default_tile": tile,
    }


def export_shapes(model_config: dict) -> list[tuple[int, ...]]:
    """Two small shapes, each spatial size a multiple of the divisor and different per axis."""
    cfg = UNetConfig.from_dict(dict(model_config))
    d, c = cfg.divisor, cfg.in_channels
    if cfg.is_2d:
        return [(1, c, 4 * d, 6 * d), (2, c, 6 * d, 4 * d)]
    return [(1, c, 2 * d, 4 * d, 6 * d), (2, c, 3 * d, 3 * d, 4 * d)]


def export_module(model: UNet, model_config: dict) -> nn.Module:
    del model_config
    return UNetInference(model).eval()


FAMILY = register(Family("unet", build_model, card_fields, export_shapes, export_module))
