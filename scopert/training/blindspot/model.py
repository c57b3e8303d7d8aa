"""The ``blindspot`` family: SHINE, the self-supervised multi-frame blind-spot EM denoiser.

Input ``[N, frame_num, H, W]`` (frames stacked as channels), output ``[N, out_channels, H, W]``: the denoised centre
frame, in z-score units. The centre frame enters only through a 1x1 conv, and every path to the output passes a
centre-zeroed dilated 3x3 "ring" kernel whose dilation exceeds the radius gathered before it, so an output pixel
never sees the centre-frame pixels within ``blind`` (Chebyshev) of itself. Neighbouring frames are not blind.

Parameter names follow the seed (``first_output.params``, ``dilated_convs.{i}.params``, ``upsample_list.{i}.1.weight``
...) so Lightning checkpoints load strictly once the ``model.`` prefix is removed.

Imports torch and ``scopert.training.common.registry``; must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scopert.errors import ConfigError
from scopert.training.common.registry import Family, register

ALIGN = 64  # the seed zero-pads H and W to a multiple of 64; exported modules require it instead
PAD_MODES = ("seed", "minimal")
_NAME = re.compile(r"^(\d+)x(\d+)_blind$")
# Flat 3x3 positions of the ring taps, in the seed's torch.nonzero order (row-major, centre skipped).
RING_POSITIONS = (0, 1, 2, 3, 5, 6, 7, 8)


@dataclass
class BlindSpotConfig:
    """SHINE's architecture. ``name`` is the seed's ``--model`` (``NxN_blind``, N odd) and fixes the blind spot.

    ``pad_mode`` 'seed' reproduces public SHINE's padding (a dimension already a multiple of 64 still gets +64 when the
    other one does not); 'minimal' is SHINE-dev's fix. It only matters for unaligned inputs to ``forward``.
    """

    name: str = "3x3_blind"
    frame_num: int = 5
    filter: int = 64
    in_channels: int = 1
    out_channels: int = 1
    pad_mode: str = "seed"

    @classmethod
    def from_dict(cls, data: dict, where: str = "blindspot model config") -> "BlindSpotConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}.")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}. Known keys: {', '.join(known)}.")
        cfg = cls(**data)
        cfg.validate(where)
        return cfg

    @property
    def blind(self) -> int:
        """Blind-spot radius ('add' in the seed): 1x1 -> 0, 3x3 -> 1, 5x5 -> 2, 9x9 -> 4."""
        return blind_radius(self.name)

    def validate(self, where: str = "blindspot model config") -> None:
        blind_radius(self.name)
        for key in ("frame_num", "filter", "in_channels", "out_channels"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}.")
        if self.in_channels != 1:
            raise ConfigError(
                f"{where}: in_channels is {self.in_channels}; SHINE stacks single-channel frames, so use in_channels 1 "
                "and put the frames on frame_num."
            )
        if self.frame_num > 1 and self.filter % 4:
            raise ConfigError(
                f"{where}: filter {self.filter} is not a multiple of 4; SHINE splits it 3/4 centre, 1/4 neighbours."
            )
        if self.pad_mode not in PAD_MODES:
            raise ConfigError(f"{where}: pad_mode {self.pad_mode!r} is not one of {PAD_MODES}.")


def blind_radius(name: str) -> int:
    """Parse ``NxN_blind`` like the seed (``int(N) // 2``); only square, odd blind spots are defined."""
    m = _NAME.match(str(name))
    if not m or m.group(1) != m.group(2) or int(m.group(1)) % 2 == 0:
        raise ConfigError(
            f"blind-spot model {name!r} is not understood; use NxN_blind with N odd, e.g. 1x1_blind, 3x3_blind, "
            "5x5_blind or 9x9_blind."
        )
    return int(m.group(1)) // 2


def ring_dilations(blind: int) -> tuple[int, list[int], list[int]]:
    """Dilations of first_output, dilated_convs[0..3] and dilated_convs_res[0..3].

    The seed encodes them as kernel sizes: first k = 2(add+1)+1, dil k0 = 2(add+5)+1, res k = k_dil - 4, and the next
    k = (k//4 + 6)*2 + 1; the dilation is k//2.
    """
    first = blind + 1
    k = 2 * (blind + 5) + 1
    dil, res = [], []
    for _ in range(4):
        dil.append(k // 2)
        res.append((k - 4) // 2)
        k = (k // 4 + 6) * 2 + 1
    return first, dil, res


def ring_kernel(params: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 8) ring parameters -> (Cout, Cin, 3, 3) kernel with an exactly zero centre."""
    zero = params.new_zeros(params.shape[:2] + (1,))
    flat = torch.cat((params[..., :4], zero, params[..., 4:]), dim=-1)
    return flat.reshape(params.shape[0], params.shape[1], 3, 3)


class RingConv2d(nn.Module):
    """A 3x3 conv with dilation d, zero padding d and a zero centre tap: the seed's ParamConv_reg_variable_dilation."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__()
        self.dilation = int(dilation)
        self.params = nn.Parameter(torch.empty(out_channels, in_channels, 8))
        nn.init.kaiming_uniform_(self.params, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dilation
        return F.conv2d(x, ring_kernel(self.params), padding=d, dilation=d)

    def to_static(self) -> nn.Conv2d:
        """The same operator as a plain Conv2d whose weight holds the zero centre (ONNX/TensorRT friendly)."""
        out_ch, in_ch, _ = self.params.shape
        d = self.dilation
        conv = nn.Conv2d(in_ch, out_ch, 3, padding=d, dilation=d, bias=False)
        with torch.no_grad():
            conv.weight.copy_(ring_kernel(self.params.detach()))
        return conv


def _conv3(ch_in: int, ch_out: int) -> nn.Conv2d:
    return nn.Conv2d(ch_in, ch_out, 3, 1, 1, bias=False)


def _conv1(ch_in: int, ch_out: int) -> nn.Conv2d:
    return nn.Conv2d(ch_in, ch_out, 1, 1, 0, bias=False)


class SHINE(nn.Module):
    """SHINE (public ``sungsu-kang/SHINE``): bias-free convs, one shared exact GELU, no normalization layers."""

    def __init__(self, cfg: BlindSpotConfig) -> None:
        super().__init__()
        self.config = cfg
        f, n = cfg.filter, cfg.frame_num
        act = nn.GELU()
        self.activation = act
        if n > 1:
            centre_ch, neigh_ch = int(f * 0.75), int(f * 0.25)
            layers = [nn.Sequential(_conv3(cfg.in_channels * (n - 1), neigh_ch), act)]
            layers += [nn.Sequential(_conv3(neigh_ch, neigh_ch), act) for _ in range(cfg.blind)]
            self.convolution_layer0_a = nn.Sequential(*layers)
        else:
            centre_ch = f
        self.convolution_layer0_b = _conv1(cfg.in_channels, centre_ch)
        first, dil, res = ring_dilations(cfg.blind)
        self.first_output = RingConv2d(f, f, first)
        self.convolution_layer10 = nn.ModuleList(nn.Sequential(_conv3(f, f), act, _conv3(f, f)) for _ in range(4))
        self.convolution_layer2 = nn.ModuleList(nn.Sequential(_conv3(f, f), act, _conv3(f, f)) for _ in range(4))
        self.dilated_convs = nn.ModuleList(RingConv2d(f, f, d) for d in dil)
        self.dilated_convs_res = nn.ModuleList(RingConv2d(f, f, d) for d in res)
        merged = 9 * f
        self.outconvs = nn.Sequential(_conv1(merged, merged // 2), act, _conv1(merged // 2, f), act)
        self.last_out = _conv1(f, cfg.out_channels)
        self.pool2d = nn.AvgPool2d(2)
        # The same up[i] serves the res and the dilated branch at scale i, as in the seed.
        self.upsample_list = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2**i, mode="bilinear", align_corners=False), _conv1(f, f), act)
            for i in range(4)
        )

    def pad_amounts(self, height: int, width: int) -> tuple[int, int]:
        """Bottom/right zero padding the seed applies; 'seed' mode keeps its over-padding of an aligned dimension."""
        if self.config.pad_mode == "minimal":
            return (-height) % ALIGN, (-width) % ALIGN
        if height % ALIGN or width % ALIGN:
            return ALIGN - height % ALIGN, ALIGN - width % ALIGN
        return 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = self.pad_amounts(int(height), int(width))
        if pad_h or pad_w:
            x = F.pad(x, [0, pad_w, 0, pad_h])
        y = self.core(x)
        return y[..., :height, :width] if (pad_h or pad_w) else y

    def core(self, x: torch.Tensor) -> torch.Tensor:
        """The network on an input whose H and W are multiples of 64 (no padding, no cropping)."""
        act = self.activation
        c = self.config.frame_num // 2
        if self.config.frame_num > 1:
            centre = act(self.convolution_layer0_b(x[:, c:c + 1]))
            neighbours = self.convolution_layer0_a(torch.cat((x[:, :c], x[:, c + 1:]), dim=1))
            base = torch.cat((centre, neighbours), dim=1)
        else:
            base = act(self.convolution_layer0_b(x))
        outputs = [act(self.first_output(base))]
        base = act(self.convolution_layer10[0](base) + base)
        outputs.append(act(self.dilated_convs_res[0](base)))
        base = act(self.convolution_layer2[0](base) + base)
        for i in range(4):
            outputs.append(self.upsample_list[i](act(self.dilated_convs[i](base))))
            if i < 3:
                base = self.pool2d(base)
                base = act(self.convolution_layer10[i + 1](base) + base)
                outputs.append(self.upsample_list[i + 1](act(self.dilated_convs_res[i + 1](base))))
                base = act(self.convolution_layer2[i + 1](base) + base)
        return self.last_out(self.outconvs(torch.cat(outputs, dim=1)))


class SHINEExport(nn.Module):
    """What export traces: SHINE's core with each ring kernel as a static dilated Conv2d and no data-dependent pad.

    H and W must be multiples of 64 (the card's divisor); the runtime pads. The scale-1 bilinear upsample is an
    exact identity and is dropped.
    """

    def __init__(self, model: SHINE) -> None:
        super().__init__()
        net = copy.deepcopy(model).eval()
        net.first_output = model.first_output.to_static()
        net.dilated_convs = nn.ModuleList(m.to_static() for m in model.dilated_convs)
        net.dilated_convs_res = nn.ModuleList(m.to_static() for m in model.dilated_convs_res)
        net.upsample_list[0][0] = nn.Identity()
        self.net = net
        halo = structural_halo(model.config)
        # Read by export (onnx_export.export_run) in place of the impulse probe; None: export probes.
        self.halo_hint = None if halo is None else {"y": halo, "x": halo}

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net.core(frames)


# ---- family hooks ---------------------------------------------------------------------------------------------


def build_model(model_config: dict) -> SHINE:
    return SHINE(BlindSpotConfig.from_dict(dict(model_config)))


# Receptive-field radius (px) of SHINE per blind radius, measured with export's impulse probe on a filter-4 copy with
# 5 frames and divisor 8 (the net's period: three 2x poolings); tests/training/test_blindspot_train_halo.py
# re-measures an entry. One frame reaches no further. SHINEExport.halo_hint carries it to export, which uses it instead
# of probing the full network (minutes on a CPU: > 320 px probes, 64 output phases, slow dilated convs).
STRUCTURAL_HALO = {0: 160, 1: 161, 2: 162, 4: 164}


def structural_halo(cfg: BlindSpotConfig) -> int | None:
    """The declared halo for ``cfg``; None for an untabulated blind spot (export then probes)."""
    return STRUCTURAL_HALO.get(cfg.blind)


def card_fields(model_config: dict) -> dict:
    """Frames are the card's t axis (time_window = frame_num); the output is the centre frame, min-max remapped
    to the raw centre frame by the runtime as the seed does."""
    cfg = BlindSpotConfig.from_dict(dict(model_config))
    return {
        "input": {"name": "frames", "axes": "btyx", "dtype": "float32", "channels": 1,
                  "divisor": {"y": ALIGN, "x": ALIGN}, "time_window": cfg.frame_num},
        "output": {"name": "denoised", "axes": "bcyx", "dtype": "float32", "channels": cfg.out_channels},
        "normalization": {"kind": "zscore", "per_frame": True},
        "postprocess": {"kind": "minmax_to_centre_frame"},
        "tile_invariant": False,
        "default_tile": {"y": 512, "x": 512},
    }


def export_shapes(model_config: dict) -> list[tuple[int, ...]]:
    cfg = BlindSpotConfig.from_dict(dict(model_config))
    return [(1, cfg.frame_num, ALIGN, 2 * ALIGN), (2, cfg.frame_num, 2 * ALIGN, ALIGN)]


def export_module(model: SHINE, model_config: dict) -> nn.Module:
    del model_config
    return SHINEExport(model).eval()


FAMILY = register(Family("blindspot", build_model, card_fields, export_shapes, export_module))
