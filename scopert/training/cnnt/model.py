"""CNNT family ('cnnt'): the CNN-transformer U-Net of the CNNT seed over [B, T, C, H, W] time series.

Module and parameter names match the seed's state dict (``pre_cnnt``, ``cnnt.<set>.blocks.<i>.attn...``,
``pos_cnnt``). Three deliberate, exactly equivalent changes make the model export cleanly:

- the attention's 1/sqrt(d) scale is applied as d**-0.25 to q and to k before the product, so the
  logits never exceed the FP16 range on large tiles;
- the 5D trilinear resizes become 2x2 average pooling (x0.5) and half-pixel bilinear x2 on the
  (B*T, C, H, W) view;
- the seed's causal-mask buffers (80 MB, unused) are accepted on load and dropped; the mask is built
  on the fly when ``is_causal``.

Imports torch only; must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scopert.errors import ConfigError
from scopert.training.common.registry import Family, register

log = logging.getLogger(__name__)

NORM_MODES = ("instance", "batch", "layer", "mixed")
WRAPPERS = ("enhanced", "plain")
SEED_MASK_KEY = "mask"


@dataclass
class CnntConfig:
    """Architecture of a CNNT model, in the seed's option names.

    ``height``/``width`` (the seed's first training patch size) matter only for ``layer`` norm, whose
    weights have shape [C, H, W]. ``wrapper`` 'enhanced' is the seed's default model (pre convs,
    pre - CNNTUnet(pre), post convs); 'plain' is x - CNNTUnet(x) with one channel.
    """

    blocks: list[int] = field(default_factory=lambda: [32, 64, 96])
    blocks_per_set: int = 4
    n_head: int = 8
    norm_mode: str = "instance"
    height: int = 128
    width: int = 128
    time: int = 16
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    dropout_p: float = 0.1
    with_mixer: bool = True
    no_residual: bool = False
    is_causal: bool = False
    wrapper: str = "enhanced"
    # How inputs were scaled in training (the seed's --im_value_scale / --per_scaling); only the card uses them.
    im_value_scale: list[float] = field(default_factory=lambda: [0.0, 65536.0])
    per_scaling: bool = False

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "CnntConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"cnnt model config: unknown key {unknown[0]!r}. Known keys: {', '.join(sorted(known))}.")
        values = dict(cfg)
        for key in ("height", "width"):  # the seed stores lists of patch sizes; the model uses the first
            if isinstance(values.get(key), (list, tuple)):
                first = values[key][0] if values[key] else None
                if isinstance(first, bool) or not isinstance(first, int):
                    raise ConfigError(f"cnnt model config: {key} must list patch sizes (integers), e.g. [128], "
                                      f"got {values[key]!r}.")
                values[key] = first
        if "with_mixer" in values:
            values["with_mixer"] = bool(values["with_mixer"])
        conf = cls(**values)
        conf.validate()
        return conf

    def validate(self) -> None:
        for key in ("blocks_per_set", "n_head", "time", "height", "width", "kernel_size", "stride", "padding"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"cnnt model config: {key} must be an integer, got {value!r}.")
        if not isinstance(self.blocks, (list, tuple)) or not 2 <= len(self.blocks) <= 4:
            raise ConfigError(f"cnnt model config: blocks must list 2 to 4 channel counts, got {self.blocks!r}.")
        for c in self.blocks:
            if not isinstance(c, int) or c < 1 or self.n_head < 1 or c % self.n_head:
                raise ConfigError(
                    f"cnnt model config: every entry of blocks must be a positive multiple of n_head={self.n_head}, "
                    f"got {self.blocks!r}."
                )
        if self.norm_mode not in NORM_MODES:
            raise ConfigError(f"cnnt model config: norm_mode {self.norm_mode!r} is unknown; use one of {NORM_MODES}.")
        if self.wrapper not in WRAPPERS:
            raise ConfigError(f"cnnt model config: wrapper {self.wrapper!r} is unknown; use one of {WRAPPERS}.")
        if (
            self.kernel_size < 1
            or self.kernel_size % 2 == 0
            or self.stride != 1
            or self.padding != self.kernel_size // 2
        ):
            raise ConfigError(
                f"cnnt model config: kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding} "
                "change the feature size, which breaks the residual connections; use an odd kernel_size, stride 1 "
                "and padding kernel_size // 2."
            )
        for key in ("blocks_per_set", "n_head", "time", "height", "width"):
            if getattr(self, key) < 1:
                raise ConfigError(f"cnnt model config: {key} must be >= 1, got {getattr(self, key)!r}.")
        levels = len(self.blocks)
        if self.norm_mode == "layer" and (self.height % self.divisor or self.width % self.divisor):
            raise ConfigError(
                f"cnnt model config: layer norm needs height and width divisible by {self.divisor} for {levels} "
                f"levels, got {self.height}x{self.width}."
            )

    @property
    def levels(self) -> int:
        return len(self.blocks)

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.blocks) - 1)


class Conv2DExt(nn.Module):
    """A 2D conv applied to every frame of [B, T, C, H, W] (weights at ``conv2d.*``, as in the seed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Static channel counts keep the exported graph's channel dims known (InstanceNormalization needs them).
        b, t, _, h, w = x.shape
        y = self.conv2d(x.reshape(-1, self.conv2d.in_channels, h, w))
        return y.reshape(b, t, self.conv2d.out_channels, y.shape[2], y.shape[3])


def _quarter_root(x: torch.Tensor, n: Any) -> torch.Tensor:
    """n**-0.25 as a tensor of x's dtype; stays a traced op when n is a traced shape value."""
    return (x.new_ones(()) * n) ** -0.25


class CnnSelfAttention(nn.Module):
    """Multi-head attention over time: each token is one head's whole feature map of one frame.

    logits[t, s] = <q_t, k_s> / sqrt(hc * H * W), with q and k flattened over (hc, H, W). The scale is split
    as (hc*H*W)**-0.25 on q and on k, which is equal in exact arithmetic and keeps the product in FP16 range.
    The seed's ``mask`` buffer is accepted by load_state_dict and discarded.
    """

    def __init__(self, channels: int, n_head: int, kernel_size: int, padding: int, dropout_p: float, is_causal: bool):
        super().__init__()
        self.n_head = n_head
        self.channels = channels
        self.is_causal = is_causal
        conv = dict(kernel_size=kernel_size, stride=1, padding=padding, bias=True)
        self.key = Conv2DExt(channels, channels, **conv)
        self.query = Conv2DExt(channels, channels, **conv)
        self.value = Conv2DExt(channels, channels, **conv)
        self.output_proj = Conv2DExt(channels, channels, **conv)
        self.attn_drop = nn.Dropout(dropout_p)
        self.resid_drop = nn.Dropout(dropout_p)  # present in the seed, never applied

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        state_dict.pop(prefix + SEED_MASK_KEY, None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        nh, hc = self.n_head, self.channels // self.n_head
        q = self.query(x)
        k = self.key(x)
        v = self.value(x)
        h, w = q.shape[3], q.shape[4]
        s = _quarter_root(q, hc) * _quarter_root(q, h) * _quarter_root(q, w)
        q = (q * s).reshape(b, t, nh, -1).transpose(1, 2)  # [B, nh, T, hc*H*W]
        k = (k * s).reshape(b, t, nh, -1).transpose(1, 2)
        v = v.reshape(b, t, nh, -1).transpose(1, 2)
        att = q @ k.transpose(-2, -1)  # [B, nh, T, T]
        if self.is_causal:
            keep = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~keep, float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, self.channels, h, w)  # channel = head * hc + c
        return self.output_proj(y)


class FrameInstanceNorm(nn.Module):
    """InstanceNorm2d (no affine, biased variance, eps 1e-5) of every frame and channel of [B, T, C, H, W].

    Written out on the 5D tensor: the seed's reshape to (B*T, C, H, W) hides the channel count from the
    ONNX exporter, which then refuses InstanceNormalization. Reductions over H, W; no parameters.
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        centered = x - mean
        var = (centered * centered).mean(dim=(-2, -1), keepdim=True)
        return centered * torch.rsqrt(var + self.eps)


class CnnTransformer(nn.Module):
    """Pre-norm block: x + attn(N1(x)), then x + mlp(N2(x)) (mlp = conv 4C, GELU, conv C, dropout)."""

    def __init__(self, channels: int, height: int, width: int, cfg: CnntConfig, norm_mode: str) -> None:
        super().__init__()
        self.norm_mode = norm_mode
        self.channels = channels
        if norm_mode == "layer":
            self.ln1 = nn.LayerNorm([channels, height, width])
            self.ln2 = nn.LayerNorm([channels, height, width])
        elif norm_mode == "batch":
            self.bn1 = nn.BatchNorm2d(channels)
            self.bn2 = nn.BatchNorm2d(channels)
        else:
            self.in1 = FrameInstanceNorm()
            self.in2 = FrameInstanceNorm()
        k, p = cfg.kernel_size, cfg.padding
        self.attn = CnnSelfAttention(channels, cfg.n_head, k, p, cfg.dropout_p, cfg.is_causal)
        self.with_mixer = cfg.with_mixer
        if cfg.with_mixer:
            self.mlp = nn.Sequential(
                Conv2DExt(channels, 4 * channels, kernel_size=k, stride=1, padding=p, bias=True),
                nn.GELU(),
                Conv2DExt(4 * channels, channels, kernel_size=k, stride=1, padding=p, bias=True),
                nn.Dropout(cfg.dropout_p),
            )

    def _norm(self, which: int, x: torch.Tensor) -> torch.Tensor:
        if self.norm_mode == "layer":
            return (self.ln1 if which == 1 else self.ln2)(x)
        if self.norm_mode == "instance":
            return (self.in1 if which == 1 else self.in2)(x)
        layer = self.bn1 if which == 1 else self.bn2
        b, t, _, h, w = x.shape
        return layer(x.reshape(-1, self.channels, h, w)).reshape(b, t, self.channels, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self._norm(1, x))
        if self.with_mixer:
            x = x + self.mlp(self._norm(2, x))
        return x


def resize_frames(x: torch.Tensor, direction: str) -> torch.Tensor:
    """x0.5 (2x2 mean) or x2 (bilinear, half-pixel) per frame of [B, T, C, H, W].

    Equal to the seed's F.interpolate(x, scale_factor=(1, s, s), mode='trilinear') on the 5D tensor, whose
    unit scale on C samples exactly at integer positions; 4D ops export to plain AveragePool/Resize.
    """
    b, t, c, h, w = x.shape
    frames = x.reshape(-1, c, h, w)
    if direction == "down":
        y = F.avg_pool2d(frames, kernel_size=2, stride=2)
    else:
        y = F.interpolate(frames, scale_factor=2.0, mode="bilinear", align_corners=False)
    return y.reshape(b, t, c, y.shape[2], y.shape[3])


class BlockSet(nn.Module):
    """input_proj conv, N transformer blocks; returns (features, features resized for the next level)."""

    def __init__(
        self, c_in: int, c_out: int, height: int, width: int, cfg: CnntConfig, norm_mode: str, interpolate: str
    ) -> None:
        super().__init__()
        k, p = cfg.kernel_size, cfg.padding
        self.input_proj = Conv2DExt(c_in, c_out, kernel_size=k, stride=1, padding=p, bias=True)
        self.blocks = nn.Sequential(
            *[CnnTransformer(c_out, height, width, cfg, norm_mode) for _ in range(cfg.blocks_per_set)]
        )
        self.interpolate = interpolate

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.blocks(self.input_proj(x))
        if self.interpolate == "none":
            return x, x
        return x, resize_frames(x, self.interpolate)


class CNNTUnet(nn.Module):
    """2-, 3- or 4-level U-Net of BlockSets; skips are concatenated as (upsampled, skip) along C."""

    def __init__(self, cfg: CnntConfig, c_in: int, c_out: int) -> None:
        super().__init__()
        bl, n, h, w = cfg.blocks, cfg.levels, cfg.height, cfg.width
        modes = [cfg.norm_mode] * (2 * n - 1)
        if cfg.norm_mode == "mixed":
            modes = ["batch"] * (2 * n - 1)
            modes[0] = modes[-1] = "instance"
        self.levels = n

        def bs(ci: int, co: int, scale: int, i: int, interp: str) -> BlockSet:
            return BlockSet(ci, co, h // scale, w // scale, cfg, modes[i], interp)

        if n == 2:
            self.down1 = bs(c_in, bl[0], 1, 0, "down")
            self.up1 = bs(bl[0], bl[1], 2, 1, "up")
            self.final = bs(bl[0] + bl[1], bl[1], 1, 2, "none")
        elif n == 3:
            self.down1 = bs(c_in, bl[0], 1, 0, "down")
            self.down2 = bs(bl[0], bl[1], 2, 1, "down")
            self.up1 = bs(bl[1], bl[2], 4, 2, "up")
            self.up2 = bs(bl[1] + bl[2], bl[2], 2, 3, "up")
            self.final = bs(bl[0] + bl[2], bl[1], 1, 4, "none")
        else:
            self.down1 = bs(c_in, bl[0], 1, 0, "down")
            self.down2 = bs(bl[0], bl[1], 2, 1, "down")
            self.down3 = bs(bl[1], bl[2], 4, 2, "down")
            self.up1 = bs(bl[2], bl[3], 8, 3, "up")
            self.up2 = bs(bl[2] + bl[3], bl[3], 4, 4, "up")
            self.up3 = bs(bl[1] + bl[3], bl[2], 2, 5, "up")
            self.final = bs(bl[0] + bl[2], bl[1], 1, 6, "none")
        self.output_proj = Conv2DExt(bl[1], c_out, cfg.kernel_size, padding=cfg.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, d = self.down1(x)
        if self.levels == 2:
            _, u = self.up1(d)
            z, _ = self.final(torch.cat((u, x1), dim=2))
        elif self.levels == 3:
            x2, d = self.down2(d)
            _, u = self.up1(d)
            _, u = self.up2(torch.cat((u, x2), dim=2))
            z, _ = self.final(torch.cat((u, x1), dim=2))
        else:
            x2, d = self.down2(d)
            x3, d = self.down3(d)
            _, u = self.up1(d)
            _, u = self.up2(torch.cat((u, x3), dim=2))
            _, u = self.up3(torch.cat((u, x2), dim=2))
            z, _ = self.final(torch.cat((u, x1), dim=2))
        return self.output_proj(z)


class CNNTEnhanced(nn.Module):
    """The seed's default model: pre = 2 convs (1->16->32), out = pre - cnnt(pre), 2 convs back to 1."""

    def __init__(self, cfg: CnntConfig) -> None:
        super().__init__()
        k, p = cfg.kernel_size, cfg.padding
        conv = dict(kernel_size=k, stride=1, padding=p, bias=True)
        self.no_residual = cfg.no_residual
        self.pre_cnnt = nn.Sequential(Conv2DExt(1, 16, **conv), Conv2DExt(16, 32, **conv))
        self.cnnt = CNNTUnet(cfg, 32, 32)
        self.pos_cnnt = nn.Sequential(Conv2DExt(32, 16, **conv), Conv2DExt(16, 1, **conv))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_cnnt(x)
        noise = self.cnnt(pre)
        return self.pos_cnnt(noise if self.no_residual else pre - noise)


class CNNTPlain(nn.Module):
    """The seed's CNNT_denoising_runtime: x - CNNTUnet(x) on one channel."""

    def __init__(self, cfg: CnntConfig) -> None:
        super().__init__()
        self.cnnt = CNNTUnet(cfg, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.cnnt(x)


def seed_mask_keys(model: nn.Module) -> list[str]:
    """The ``<attn>.mask`` keys the seed's state dict holds for this model (one per attention layer)."""
    return [f"{name}.{SEED_MASK_KEY}" for name, m in model.named_modules() if isinstance(m, CnnSelfAttention)]


# ---- family hooks ----------------------------------------------------------------------------------------


def build_model(model_config: dict) -> nn.Module:
    """Build the CNNT model described by ``model_config`` (see CnntConfig) with the seed's module names."""
    cfg = CnntConfig.from_dict(model_config)
    return CNNTEnhanced(cfg) if cfg.wrapper == "enhanced" else CNNTPlain(cfg)


def card_fields(model_config: dict) -> dict:
    """ModelCard fields: [B, T, 1, H, W] in and out, the seed's x/65536 clip, not tile invariant."""
    cfg = CnntConfig.from_dict(model_config)
    div = {"y": cfg.divisor, "x": cfg.divisor}
    notes = [
        f"CNNT {cfg.levels}-level U-Net, blocks {list(cfg.blocks)}, {cfg.blocks_per_set} per set, "
        f"{cfg.n_head} heads, {cfg.norm_mode} norm; attention over a window of {cfg.time} frames.",
        "The seed scales inputs as clip(x / 65536, 0, 1) (or per-image 1.5/99.5 percentiles with --per_scaling) "
        "and clips outputs to [0, 1].",
    ]
    if cfg.norm_mode == "layer":
        notes.append(f"layer norm: tiles must be exactly {cfg.height}x{cfg.width}.")
    if cfg.is_causal:
        notes.append("causal attention: each frame attends only to itself and earlier frames.")
    tile = {"y": cfg.height, "x": cfg.width} if cfg.norm_mode == "layer" else {"y": 128, "x": 128}
    return {
        "input": {"name": "input", "axes": "btcyx", "channels": 1, "divisor": div, "time_window": cfg.time},
        "output": {"name": "output", "axes": "btcyx", "channels": 1, "divisor": div, "time_window": cfg.time},
        "normalization": _normalization(cfg),
        "postprocess": {"clip": [0.0, 1.0]},
        "tile_invariant": False,
        "default_tile": tile,
        "notes": " ".join(notes),
    }


def _normalization(cfg: CnntConfig) -> dict:
    """The training scaling as a card normalization: clip((x - lo) / (hi - lo)), or 1.5/99.5 percentiles."""
    if cfg.per_scaling:
        return {"kind": "percentile", "pmin": 1.5, "pmax": 99.5, "clip": True}
    lo, hi = (float(v) for v in cfg.im_value_scale)
    return {"kind": "fixed", "offset": lo, "scale": hi - lo, "clip": True}


def export_shapes(model_config: dict) -> list[tuple[int, ...]]:
    """Two [B, T, 1, H, W] shapes that differ in T, H and W (only in T for layer norm, which fixes H, W)."""
    cfg = CnntConfig.from_dict(model_config)
    t2 = cfg.time // 2 if cfg.time >= 4 else cfg.time + 1
    if cfg.norm_mode == "layer":
        return [(1, cfg.time, 1, cfg.height, cfg.width), (1, t2, 1, cfg.height, cfg.width)]
    d = cfg.divisor
    a = max(32, 4 * d)
    return [(1, cfg.time, 1, a, a), (1, t2, 1, a + 2 * d, a + 4 * d)]


FAMILY = register(Family(name="cnnt", build_model=build_model, card_fields=card_fields, export_shapes=export_shapes))
