"""The TensorRT engine cache key, and the checks that run before any engine is deserialized.

An engine is valid only for the model, GPU (name and compute capability), TensorRT version, precision
(including whether TF32 was allowed) and optimization profiles it was built for. The builder (``scopert.export.trt_builder``) writes the key
into the sidecar card (``verification['trt_engine']``); the TRT backend compares it with this machine
before calling TensorRT. Imports only the standard library and ``scopert.card``/``scopert.errors``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scopert.card import ModelCard, read_sidecar, sidecar_path
from scopert.checksum import sha256_file
from scopert.errors import BackendError, CardError, InputError

ENGINE_SUFFIX = ".engine"
CARD_KEY = "trt_engine"
# One identical optimization profile per in-flight slot: NvInferRuntime.h asks that execution contexts used
# concurrently each select their own profile, so an engine serves at most this many concurrent slots.
DEFAULT_PROFILES = 2


@dataclass(frozen=True)
class ProfileShapes:
    """One optimization profile: min/opt/max input shapes (batch first)."""

    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def contains(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def as_ort_options(self) -> dict[str, str]:
        """ONNX Runtime TensorRT provider options: ``trt_profile_min/opt/max_shapes`` ("name:1x1x8x64x64")."""
        def fmt(shape: tuple[int, ...]) -> str:
            return f"{self.input_name}:{'x'.join(str(int(s)) for s in shape)}"

        return {"trt_profile_min_shapes": fmt(self.min), "trt_profile_opt_shapes": fmt(self.opt),
                "trt_profile_max_shapes": fmt(self.max)}


def smallest_tile(halo: int, divisor: int) -> int:
    """The smallest window the tiler sends on an axis: an image of 1 voxel plus its halo, divisor-rounded."""
    return -(-(2 * halo + 1) // divisor) * divisor


def tile_profile(card: ModelCard, tile: tuple[int, ...], batch: int) -> ProfileShapes:
    """min/opt/max for a tile plan: opt = max = (batch, tile), min = (1, smallest window the tiler sends).

    The tiler feeds full tiles (edge tiles are reflect-padded to the tile), and one shrunk window only for an
    image smaller than a tile: ``round_up(size + 2*halo, divisor)`` >= ``round_up(2*halo + 1, divisor)``. So the
    minimum is that, not the divisor: kernels are tuned for opt, and a range far below any real shape costs
    tactics for nothing. Time and channel axes are fixed. A tile the tiler would refuse is a ConfigError here.
    """
    from scopert.errors import ConfigError

    spec = card.input
    spatial = spec.spatial_axes
    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}.")
    if len(tile) != len(spatial):
        raise ConfigError(f"--tile {','.join(map(str, tile))} has {len(tile)} sizes; the model's spatial axes are "
                          f"{spatial!r} ({len(spatial)} sizes, e.g. --tile {','.join(['64'] * len(spatial))}).")
    sizes = dict(zip(spatial, tile))
    for ax, s in sizes.items():
        d, h = int(spec.divisor.get(ax, 1)), int(card.halo.get(ax, 0))
        if s < 1 or s % d:
            raise ConfigError(f"--tile: axis {ax!r} = {s} must be a positive multiple of the model's divisor {d}.")
        if s <= 2 * h:
            raise ConfigError(f"--tile: axis {ax!r} = {s} is not larger than 2x the halo ({2 * h}); use at least "
                              f"{smallest_tile(h, d)}.")
    lo, opt = [], []
    for ax in spec.axes:
        if ax == "b":
            lo.append(1), opt.append(batch)
        elif ax == "c":
            lo.append(spec.channels), opt.append(spec.channels)
        elif ax == "t":
            tw = int(spec.time_window or sizes.get("t", 1))
            lo.append(tw), opt.append(tw)
        else:
            d, h = int(spec.divisor.get(ax, 1)), int(card.halo.get(ax, 0))
            lo.append(min(sizes[ax], smallest_tile(h, d))), opt.append(sizes[ax])
    return ProfileShapes(spec.name, tuple(lo), tuple(opt), tuple(opt))


@dataclass(frozen=True)
class GpuInfo:
    """What an engine depends on: the GPU model and compute capability, and TensorRT's version."""

    name: str
    compute_capability: str  # "9.0"
    trt_version: str


@dataclass(frozen=True)
class EngineKey:
    model_sha256: str
    gpu_name: str
    compute_capability: str
    trt_version: str
    precision: str
    profile: ProfileShapes
    tf32: bool = False  # TensorRT's default is on; ScopeRT clears it unless asked (FP32 means FP32)
    profiles: int = 1  # identical copies of ``profile``, one per concurrent execution context

    def digest(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["profile"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data["profile"].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineKey":
        p = data["profile"]
        profile = ProfileShapes(p["input_name"], tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
        # keys written before TF32 was cleared describe engines built with TensorRT's default (TF32 on)
        return cls(data["model_sha256"], data["gpu_name"], data["compute_capability"], data["trt_version"],
                   data["precision"], profile, bool(data.get("tf32", True)), int(data.get("profiles", 1)))


def read_engine_card(engine_path: str | os.PathLike) -> tuple[ModelCard, EngineKey, str]:
    """The sidecar card, the key it records and the engine's recorded sha256; clear errors when absent."""
    path = Path(engine_path)
    if not path.is_file():
        raise InputError(f"engine {path} does not exist. Build it with `scopert build MODEL.onnx --tile Z,Y,X`.")
    card = read_sidecar(path)
    if card is None:
        raise CardError(
            f"engine {path} has no sidecar card ({sidecar_path(path).name}); ScopeRT cannot tell what it was built "
            "for. Rebuild it with `scopert build MODEL.onnx`, which writes both files."
        )
    entry = card.verification.get(CARD_KEY)
    if not isinstance(entry, dict) or "key" not in entry or "engine_sha256" not in entry:
        raise CardError(f"{sidecar_path(path)} has no '{CARD_KEY}' entry; it is not an engine card. Rebuild the "
                        "engine with `scopert build MODEL.onnx`.")
    try:
        key = EngineKey.from_dict(entry["key"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CardError(f"{sidecar_path(path)}: malformed engine key ({exc}). Rebuild the engine.") from None
    return card, key, str(entry["engine_sha256"])


def check_engine(engine_path: str | os.PathLike, here: GpuInfo) -> tuple[ModelCard, EngineKey]:
    """Refuse a foreign, stale or corrupt engine before TensorRT sees it."""
    path = Path(engine_path)
    card, key, digest = read_engine_card(path)
    if key.gpu_name != here.name or key.compute_capability != here.compute_capability:
        raise BackendError(
            f"engine {path.name} was built for {key.gpu_name} (compute capability {key.compute_capability}); this "
            f"machine has {here.name} ({here.compute_capability}). Engines are not portable: rebuild it here with "
            "`scopert build MODEL.onnx`."
        )
    if key.trt_version != here.trt_version:
        raise BackendError(
            f"engine {path.name} was built with TensorRT {key.trt_version}; this machine has TensorRT "
            f"{here.trt_version}. Rebuild it with `scopert build MODEL.onnx` (or install TensorRT {key.trt_version})."
        )
    if sha256_file(path) != digest:
        raise InputError(
            f"engine {path} is corrupt or was replaced (its sha256 differs from the one in its card). Rebuild it "
            "with `scopert build MODEL.onnx --rebuild`."
        )
    return card, key
