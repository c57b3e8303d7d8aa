"""TA-GAN family ('tagan'): the ResNet / pix2pix U-Net generators, the PatchGAN discriminator and the
segmentation network of the TA-GAN seed, with state-dict keys that match the seed's ``.pth`` files.

Two inference modes are offered for export (``model_config['inference_mode']``):

- ``eval`` (default): BatchNorm with running statistics, no dropout. Deterministic and tile invariant.
- ``seed_test``: what the seed's ``test.py`` does without ``--eval`` at batch 1: BatchNorm with the
  statistics of each image (= InstanceNorm with the BN affine, biased variance) and no dropout
  (the seed's active Dropout(0.5) needs an RNG that engines do not have).

Imports torch only; must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scopert.errors import ConfigError
from scopert.training.common.registry import Family, register

log = logging.getLogger(__name__)

RESNET_ARCHS = {"resnet_9blocks": 9, "resnet_6blocks": 6}
UNET_ARCHS = {"unet_32": 5, "unet_128": 7, "unet_256": 8}
DISC_ARCHS = ("basic", "n_layers")
ROLES = ("generator", "segmentor", "discriminator")
NORMS = ("batch", "instance", "none")
INFERENCE_MODES = ("eval", "seed_test")


@dataclass
class TaganConfig:
    """Architecture of one TA-GAN network, in the seed's option names.

    ``role`` picks the seed constructor: ``generator`` (define_G), ``segmentor`` (define_S: ResNet blocks
    without a Dropout layer, U-Net without dropout) or ``discriminator`` (define_D, PatchGAN; training only).
    ``ngf`` is the seed's ``--ngf`` (also used for S, as the seed does) or ``ndf`` for the discriminator.
    """

    role: str = "generator"
    arch: str = "resnet_9blocks"
    input_nc: int = 1
    output_nc: int = 1
    ngf: int = 64
    norm: str = "batch"
    use_dropout: bool = True
    n_layers: int = 3
    inference_mode: str = "eval"
    compat_8bit: bool = False

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "TaganConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(
                f"tagan model config: unknown key {unknown[0]!r}. Known keys: {', '.join(sorted(known))}."
            )
        conf = cls(**cfg)
        conf.validate()
        return conf

    def validate(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"tagan model config: role {self.role!r} is unknown; use one of {ROLES}.")
        archs = DISC_ARCHS if self.role == "discriminator" else (*RESNET_ARCHS, *UNET_ARCHS)
        if self.arch not in archs:
            raise ConfigError(
                f"tagan model config: arch {self.arch!r} is not a {self.role} architecture; use one of {tuple(archs)}."
            )
        if self.norm not in NORMS:
            raise ConfigError(f"tagan model config: norm {self.norm!r} is unknown; use one of {NORMS}.")
        if self.inference_mode not in INFERENCE_MODES:
            raise ConfigError(
                f"tagan model config: inference_mode {self.inference_mode!r} is unknown; use one of {INFERENCE_MODES}."
            )
        for key in ("input_nc", "output_nc", "ngf", "n_layers"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"tagan model config: {key} must be a positive integer, got {value!r}.")

    @property
    def divisor(self) -> int:
        """Spatial size multiple the architecture needs: 2 stride-2 convs for ResNets, 2**num_downs for U-Nets."""
        if self.arch in UNET_ARCHS:
            return 2 ** UNET_ARCHS[self.arch]
        return 4


# ---- building blocks -------------------------------------------------------------------------------------


def _norm_layer(norm: str, channels: int) -> nn.Module:
    """The seed's get_norm_layer: BN (affine, running stats), InstanceNorm (no affine, no stats) or none."""
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


class ResnetBlock(nn.Module):
    """Reflect-padded residual block. Generator blocks always hold a Dropout at index 4 (p=0.5, or 0 with
    --no_dropout), so the second conv is ``conv_block.6``; segmentor blocks have no Dropout (conv at 5)."""

    def __init__(self, dim: int, norm: str, use_dropout: bool, use_bias: bool, segmentor: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias),
            _norm_layer(norm, dim),
            nn.ReLU(True),
        ]
        if not segmentor:
            layers.append(nn.Dropout(0.5 if use_dropout else 0.0))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias),
            _norm_layer(norm, dim),
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """7x7 stem, two stride-2 convs, n residual blocks, two transposed convs, 7x7 head, Tanh (``model.*``)."""

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 64,
        norm: str = "batch",
        use_dropout: bool = True,
        n_blocks: int = 9,
        segmentor: bool = False,
    ) -> None:
        super().__init__()
        use_bias = norm == "instance"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
            _norm_layer(norm, ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            mult = 2**i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                _norm_layer(norm, ngf * mult * 2),
                nn.ReLU(True),
            ]
        for _ in range(n_blocks):
            layers.append(ResnetBlock(ngf * 4, norm, use_dropout, use_bias, segmentor))
        for i in range(2):
            mult = 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=use_bias
                ),
                _norm_layer(norm, ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnetSkipBlock(nn.Module):
    """One level of the pix2pix U-Net (``model`` = down, submodule, up).

    The seed uses an in-place LeakyReLU as the first layer of every inner level and then concatenates its
    input: the in-place op has already overwritten that input, so the skip path carries LeakyReLU(x), not x.
    This block reproduces that result without in-place ops (safe for tracing and ONNX).
    """

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "batch",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        use_bias = norm == "instance"
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [downconv, submodule, nn.ReLU(), upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [nn.LeakyReLU(0.2), downconv, nn.ReLU(), upconv, _norm_layer(norm, outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [
                nn.LeakyReLU(0.2),
                downconv,
                _norm_layer(norm, inner_nc),
                submodule,
                nn.ReLU(),
                upconv,
                _norm_layer(norm, outer_nc),
            ]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        skip = self.model[0](x)
        y = skip
        for layer in self.model[1:]:
            y = layer(y)
        return torch.cat([skip, y], 1)


class UnetGenerator(nn.Module):
    """pix2pix U-Net with ``num_downs`` stride-2 levels (7 -> unet_128, 8 -> unet_256), built inside out."""

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        num_downs: int,
        ngf: int = 64,
        norm: str = "batch",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        block = UnetSkipBlock(ngf * 8, ngf * 8, norm=norm, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, use_dropout=use_dropout)
        block = UnetSkipBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = UnetSkipBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = UnetSkipBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = UnetSkipBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs (stride 2, then 1) with LeakyReLU(0.2); one logit per overlapping patch."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        use_bias = norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=2, padding=1, bias=use_bias),
                _norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=1, padding=1, bias=use_bias),
            _norm_layer(norm, ndf * mult),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ---- family hooks ----------------------------------------------------------------------------------------


def build_model(model_config: dict) -> nn.Module:
    """Build the network named by ``model_config`` (see TaganConfig) with the seed's module layout."""
    cfg = TaganConfig.from_dict(model_config)
    if cfg.role == "discriminator":
        n_layers = 3 if cfg.arch == "basic" else cfg.n_layers
        return NLayerDiscriminator(cfg.input_nc, cfg.ngf, n_layers, cfg.norm)
    segmentor = cfg.role == "segmentor"
    if cfg.arch in RESNET_ARCHS:
        return ResnetGenerator(
            cfg.input_nc,
            cfg.output_nc,
            cfg.ngf,
            cfg.norm,
            use_dropout=cfg.use_dropout and not segmentor,
            n_blocks=RESNET_ARCHS[cfg.arch],
            segmentor=segmentor,
        )
    return UnetGenerator(
        cfg.input_nc,
        cfg.output_nc,
        UNET_ARCHS[cfg.arch],
        cfg.ngf,
        cfg.norm,
        use_dropout=cfg.use_dropout and not segmentor,
    )


def seed_test_module(model: nn.Module) -> nn.Module:
    """A copy of ``model`` as the seed's test.py runs it at batch 1, minus the random dropout.

    Train-mode BatchNorm on one image normalizes with that image's per-channel mean and biased variance,
    which is InstanceNorm with the BN affine and eps; it exports as ONNX InstanceNormalization.
    """
    out = copy.deepcopy(model)
    _swap_modules(out, batch_stats=True)
    return out.eval()


def _swap_modules(parent: nn.Module, batch_stats: bool) -> None:
    """Replace Dropout by Identity and, with ``batch_stats``, BatchNorm2d by affine InstanceNorm2d, in place."""
    for name, child in parent.named_children():
        if batch_stats and isinstance(child, nn.BatchNorm2d):
            inorm = nn.InstanceNorm2d(child.num_features, eps=child.eps, affine=True, track_running_stats=False)
            with torch.no_grad():
                inorm.weight.copy_(child.weight)
                inorm.bias.copy_(child.bias)
            setattr(parent, name, inorm)
        elif isinstance(child, nn.Dropout):
            setattr(parent, name, nn.Identity())
        else:
            _swap_modules(child, batch_stats)


def export_module(model: nn.Module, model_config: dict) -> nn.Module:
    """The module to trace: an eval copy (``eval``) or the per-image-statistics version (``seed_test``)."""
    cfg = TaganConfig.from_dict(model_config)
    if cfg.inference_mode == "seed_test":
        return seed_test_module(model)
    out = copy.deepcopy(model)
    _swap_modules(out, batch_stats=False)
    return out.eval()


def normalization(cfg: TaganConfig) -> dict[str, Any]:
    """Min-max to [-1, 1] per acquisition, or the seed's 8-bit path: counts clipped at 255, then /127.5 - 1."""
    if cfg.compat_8bit:
        return {"kind": "fixed", "offset": 127.5, "scale": 127.5, "clip": True, "symmetric": True}
    return {"kind": "minmax", "symmetric": True}


def card_fields(model_config: dict) -> dict:
    """ModelCard fields fixed by the architecture and the chosen inference mode."""
    cfg = TaganConfig.from_dict(model_config)
    if cfg.role == "discriminator":
        raise ConfigError(
            "the TA-GAN discriminator is used only in training and cannot be exported; "
            "export the generator (role 'generator') or the segmentation net (role 'segmentor')."
        )
    div = {"y": cfg.divisor, "x": cfg.divisor}
    tile = max(256, cfg.divisor)
    seed_test = cfg.inference_mode == "seed_test"
    notes = [
        f"TA-GAN {cfg.role} {cfg.arch} (ngf {cfg.ngf}, norm {cfg.norm}); inference_mode {cfg.inference_mode}.",
        "Seed 8-bit compat (model_config compat_8bit: true): the seed's Grayscale transform clips raw counts at "
        "255 and maps /255 to [-1, 1], i.e. normalization {'kind': 'fixed', 'offset': 127.5, 'scale': 127.5, "
        "'clip': True}.",
        "The seed saves outputs as rint((y + 1) / 2 * 255).",
    ]
    if seed_test:
        notes.append("seed_test: BatchNorm uses each tile's own statistics, so tiles differ from whole images.")
    return {
        "input": {"name": "input", "axes": "bcyx", "channels": cfg.input_nc, "divisor": div},
        "output": {"name": "output", "axes": "bcyx", "channels": cfg.output_nc, "divisor": div},
        "normalization": normalization(cfg),
        "postprocess": {"activation": "tanh", "range": [-1.0, 1.0]},
        "tile_invariant": not seed_test and cfg.norm != "instance",
        "default_tile": {"y": tile, "x": tile},
        "notes": " ".join(notes),
    }


def export_shapes(model_config: dict) -> list[tuple[int, ...]]:
    """Two NCHW shapes that are multiples of the divisor and differ in height and width."""
    cfg = TaganConfig.from_dict(model_config)
    d = cfg.divisor
    a = max(64, d)
    return [(1, cfg.input_nc, a, a), (1, cfg.input_nc, a + d * max(1, 32 // d), 2 * a)]


FAMILY = register(
    Family(
        name="tagan",
        build_model=build_model,
        card_fields=card_fields,
        export_shapes=export_shapes,
        export_module=export_module,
    )
)
