"""3D-RCAN (residual channel attention network) for 2D and 3D images, in PyTorch.

A faithful port of 3D-RCAN's ``build_rcan`` (Keras, channels_last) to channels_first tensors
(NCDHW for 3D, NCHW for 2D). The layer order matches Keras's build order exactly, so a Keras
checkpoint maps onto this model conv by conv (see ``conv_layers_in_build_order``). The input
standardization ``2x - 1`` and the output ``0.5y + 0.5`` are part of the model, as in the original.

Registers the ``rcan`` family. Must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from scopert.errors import ConfigError
from scopert.training.common.registry import Family, register

FAMILY_NAME = "rcan"

# train.py's default patch shapes; the model's input_shape is the training patch and the default tile.
DEFAULT_INPUT_SHAPE = {3: [16, 256, 256], 2: [256, 256]}


def default_model_config(ndim: int = 3) -> dict[str, Any]:
    """The defaults of 3D-RCAN's train.py (``config.setdefault``) for a 2D or 3D model."""
    if ndim not in (2, 3):
        raise ConfigError(f"rcan: ndim must be 2 or 3, got {ndim!r}. Use 3 for ZYX volumes, 2 for YX images.")
    return {
        "ndim": ndim,
        "num_channels": 32,
        "num_residual_blocks": 3,
        "num_residual_groups": 5,
        "channel_reduction": 8,
        "residual_scaling": 1.0,
        "num_input_channels": 1,
        "num_output_channels": -1,
        "input_shape": list(DEFAULT_INPUT_SHAPE[ndim]),
    }


_POSITIVE_INT_KEYS = ("num_channels", "num_residual_blocks", "num_residual_groups", "channel_reduction",
                      "num_input_channels")


def resolve_model_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Fill in defaults and check every key, so that a typo or a bad value fails here with its name.

    ``ndim`` defaults to 3, or to the length of ``input_shape`` when only that is given.
    """
    config = dict(config or {})
    if "ndim" not in config and isinstance(config.get("input_shape"), (list, tuple)):
        config["ndim"] = len(config["input_shape"])
    full = default_model_config(config.get("ndim", 3))
    unknown = sorted(set(config) - set(full))
    if unknown:
        raise ConfigError(f"rcan model config: unknown key {unknown[0]!r}. Known keys: {', '.join(full)}.")
    full.update(config)
    for key in _POSITIVE_INT_KEYS:
        value = full[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"rcan model config: {key} must be a positive integer, got {value!r}.")
    n_out = full["num_output_channels"]
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out == 0:
        raise ConfigError(
            f"rcan model config: num_output_channels must be a positive integer or -1 (same as input), got {n_out!r}."
        )
    if full["num_channels"] // full["channel_reduction"] < 1:
        raise ConfigError(
            f"rcan model config: channel_reduction {full['channel_reduction']} is larger than num_channels "
            f"{full['num_channels']}, which leaves no channel-attention bottleneck. Use channel_reduction <= num_channels."
        )
    scaling = full["residual_scaling"]
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        raise ConfigError(f"rcan model config: residual_scaling must be a number, got {scaling!r}.")
    full["residual_scaling"] = float(scaling)
    shape = full["input_shape"]
    if (not isinstance(shape, (list, tuple)) or len(shape) != full["ndim"]
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ConfigError(
            f"rcan model config: input_shape must be {full['ndim']} positive integers "
            f"({'ZYX' if full['ndim'] == 3 else 'YX'}), got {shape!r}."
        )
    full["input_shape"] = list(shape)
    return full


def output_channels(config: dict[str, Any]) -> int:
    """``num_output_channels``, with -1 meaning 'as many as the input' (as in build_rcan)."""
    n_out = config.get("num_output_channels", -1)
    return config.get("num_input_channels", 1) if n_out < 0 else n_out


def _conv(ndim: int, c_in: int, c_out: int, kernel_size: int) -> nn.Module:
    """Keras Conv with padding='same', stride 1, bias: for odd kernels that is symmetric zero padding k//2."""
    conv = nn.Conv3d if ndim == 3 else nn.Conv2d
    return conv(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=True)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global average pool -> 1x1 conv C//r + ReLU -> 1x1 conv C + sigmoid -> scale x.

    The pool runs over the whole tensor, so the output of a tile depends on the whole tile.
    """

    def __init__(self, ndim: int, channels: int, reduction: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1) if ndim == 3 else nn.AdaptiveAvgPool2d(1)
        self.down = _conv(ndim, channels, channels // reduction, 1)
        self.up = _conv(ndim, channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.down(self.pool(x)))
        y = torch.sigmoid(self.up(y))
        return x * y


class RCAB(nn.Module):
    """Residual channel attention block: conv+ReLU, conv, channel attention, optional scaling, + skip."""

    def __init__(self, ndim: int, channels: int, reduction: int, residual_scaling: float) -> None:
        super().__init__()
        self.conv1 = _conv(ndim, channels, channels, 3)
        self.conv2 = _conv(ndim, channels, channels, 3)
        self.attention = ChannelAttention(ndim, channels, reduction)
        self.residual_scaling = float(residual_scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attention(self.conv2(torch.relu(self.conv1(x))))
        if self.residual_scaling != 1.0:  # build_rcan adds the Lambda only then
            y = y * self.residual_scaling
        return y + x


class ResidualGroup(nn.Module):
    """B RCABs, then (only when the network has more than one group) a tail conv and the group skip."""

    def __init__(self, ndim: int, channels: int, num_blocks: int, reduction: int, residual_scaling: float,
                 with_tail: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            RCAB(ndim, channels, reduction, residual_scaling) for _ in range(num_blocks)
        )
        self.tail = _conv(ndim, channels, channels, 3) if with_tail else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for block in self.blocks:
            y = block(y)
        if self.tail is None:  # build_rcan breaks out of the loop when G == 1: no tail conv, no group skip
            return y
        return self.tail(y) + x


class RCAN(nn.Module):
    """The network of ``build_rcan``: head conv, G residual groups, tail conv + long skip, output conv."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        cfg = resolve_model_config(config)
        self.config = cfg
        ndim, channels = cfg["ndim"], cfg["num_channels"]
        groups = cfg["num_residual_groups"]
        self.head = _conv(ndim, cfg["num_input_channels"], channels, 3)
        self.groups = nn.ModuleList(
            ResidualGroup(ndim, channels, cfg["num_residual_blocks"], cfg["channel_reduction"],
                          cfg["residual_scaling"], with_tail=groups > 1)
            for _ in range(groups)
        )
        self.tail = _conv(ndim, channels, channels, 3)
        self.out = _conv(ndim, channels, output_channels(cfg), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = 2 * x - 1  # the original assumes percentile-normalized input in ~[0, 1]
        long_skip = self.head(x)
        y = long_skip
        for group in self.groups:
            y = group(y)
        y = self.tail(y) + long_skip
        return 0.5 * self.out(y) + 0.5


def build_model(config: dict[str, Any]) -> RCAN:
    return RCAN(config)


def conv_layers_in_build_order(model: RCAN) -> list[tuple[str, nn.Module]]:
    """Every conv with its qualified name, in the order build_rcan creates them.

    Keras numbers layers in creation order, so an importer pairs the i-th Keras conv with the i-th entry.
    """
    names: list[str] = ["head"]
    for g, group in enumerate(model.groups):
        for b, _ in enumerate(group.blocks):
            prefix = f"groups.{g}.blocks.{b}"
            names += [f"{prefix}.conv1", f"{prefix}.conv2", f"{prefix}.attention.down", f"{prefix}.attention.up"]
        if group.tail is not None:
            names.append(f"groups.{g}.tail")
    names += ["tail", "out"]
    modules = dict(model.named_modules())
    return [(name, modules[name]) for name in names]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def card_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The ModelCard fields that the architecture fixes."""
    cfg = resolve_model_config(config)
    ndim = cfg["ndim"]
    axes = "bczyx" if ndim == 3 else "bcyx"
    spatial = "zyx" if ndim == 3 else "yx"
    return {
        "input": {"name": "input", "axes": axes, "channels": cfg["num_input_channels"]},
        "output": {"name": "output", "axes": axes, "channels": output_channels(cfg)},
        "normalization": {"kind": "percentile", "pmin": 2.0, "pmax": 99.9, "eps": 1e-6},
        "tile_invariant": False,
        "postprocess": {"output_range": "normalized ~[0,1], no clipping (0.5y+0.5)"},
        "default_tile": dict(zip(spatial, cfg["input_shape"])),
        "notes": (
            "3D-RCAN (build_rcan): 2x-1 and 0.5y+0.5 are inside the model. Channel attention averages over "
            "the whole tile, so results depend on tile size and placement; the original tiles with the "
            "training patch shape and blends with linear ramps."
        ),
    }


def export_shapes(config: dict[str, Any]) -> list[tuple[int, ...]]:
    """Two different small shapes with batch, for ONNX-vs-torch checks."""
    cfg = resolve_model_config(config)
    c = cfg["num_input_channels"]
    if cfg["ndim"] == 3:
        return [(1, c, 8, 32, 32), (2, c, 12, 40, 48)]
    return [(1, c, 32, 32), (2, c, 40, 48)]


register(Family(name=FAMILY_NAME, build_model=build_model, card_fields=card_fields, export_shapes=export_shapes))
