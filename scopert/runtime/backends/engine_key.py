"""The TensorRT engine cache key, and the checks that run before any engine is deserialized.

An engine is valid only for the model, GPU (name and compute capability), TensorRT version, precision
and optimization profile it was built for. The builder (``scopert.export.trt_builder``) writes the key
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


@dataclass(frozen=True)
class ProfileShapes:
    """One optimization profile: min/opt/max input shapes (batch first)."""

    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def contains(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))


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
        return cls(data["model_sha256"], data["gpu_name"], data["compute_capability"], data["trt_version"],
                   data["precision"], profile)


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
