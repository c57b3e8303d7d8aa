"""The ModelCard: the one contract between training, export and runtime.

A versioned JSON document stored inside the ONNX file (``metadata_props`` key ``scopert.card``) and as a
sidecar ``<model>.card.json`` next to engines. The runtime needs nothing else to run a model correctly.
Validation happens on load and names the bad field. Imports only the standard library (``onnx`` is
imported lazily by the two helpers that touch an ONNX ModelProto).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scopert.errors import CardError

SCHEMA_VERSION = 1
METADATA_KEY = "scopert.card"
SIDECAR_SUFFIX = ".card.json"

SPATIAL_AXES = "zyx"
KNOWN_AXES = set("btczyx")
NORMALIZATION_KINDS = ("none", "percentile", "zscore", "minmax", "fixed")
TENSOR_DTYPES = ("float32", "float16")
POSTPROCESS_KINDS = ("minmax_to_centre_frame",)
"""``postprocess.kind`` values the runtime acts on; other postprocess keys are notes for people."""
PRECISION_MODES = ("fp32", "fp16-strongly-typed")
# Sanity bounds: a value past these cannot come from a real export, and would make the tiler allocate
# absurd buffers. The card is refused instead.
MAX_CHANNELS = 4096
MAX_HALO = 4096
MAX_TILE = 2**20
MAX_DIVISOR = 2**16
MAX_SCALE = 1024.0
MAX_TIME_WINDOW = 4096
_REEXPORT = "Re-export the model to write a fresh card."


@dataclass
class TensorSpec:
    """One model input or output tensor.

    ``axes`` names the model tensor's axes in order, e.g. ``bczyx``, ``bcyx`` or ``btcyx`` (``b`` batch,
    ``t`` time, ``c`` channel). ``divisor`` and ``scale`` are keyed by axis letter; a missing axis means
    divisor 1 and scale 1. ``time_window`` is the number of frames the model consumes (2D+t models).
    """

    name: str
    axes: str
    dtype: str = "float32"
    channels: int = 1
    divisor: dict[str, int] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    time_window: int | None = None
    # axes whose size the graph fixes (built for one shape, e.g. a bioimage.io package's 1x1x512x512 input): tiles
    # are exactly that size with the halo inside, and 'b' fixes the batch
    fixed: dict[str, int] = field(default_factory=dict)

    @property
    def spatial_axes(self) -> str:
        return "".join(a for a in self.axes if a in SPATIAL_AXES)


@dataclass
class Normalization:
    """Input normalization, computed once per acquisition and never per tile.

    ``percentile``: (x - p(pmin)) / (p(pmax) - p(pmin) + eps). ``zscore``: (x - mean) / std, per frame when
    ``per_frame``. ``minmax``: to [0, 1] (or [-1, 1] when ``symmetric``). ``fixed``: (x - offset) / scale.
    """

    kind: str = "percentile"
    pmin: float = 2.0
    pmax: float = 99.9
    eps: float = 1e-6
    clip: bool = False
    per_frame: bool = False
    symmetric: bool = False
    offset: float = 0.0
    scale: float = 1.0


@dataclass
class Source:
    """Where the weights came from: a checkpoint path, its sha256 and its format."""

    path: str = ""
    sha256: str = ""
    format: str = ""


@dataclass
class ModelCard:
    family: str
    name: str
    input: TensorSpec
    output: TensorSpec
    halo: dict[str, int] = field(default_factory=dict)
    tile_invariant: bool = True
    normalization: Normalization = field(default_factory=Normalization)
    postprocess: dict[str, Any] = field(default_factory=dict)
    source: Source = field(default_factory=Source)
    training_config: dict[str, Any] = field(default_factory=dict)
    default_tile: dict[str, int] = field(default_factory=dict)
    precision: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    schema_version: int = SCHEMA_VERSION

    def mask_threshold(self) -> float | None:
        """The threshold that turns the output into a mask when the output is a segmentation, else None.

        Precision gates judge a segmentation by its mask (Dice), a restoration by PSNR."""
        post = self.postprocess or {}
        config = self.training_config or {}
        model_config = config.get("model") if isinstance(config.get("model"), dict) else {}
        seg = bool(post.get("segmentation") or post.get("threshold") is not None
                   or config.get("is_segmentation") or model_config.get("is_segmentation"))
        return float(post.get("threshold", 0.5)) if seg else None

    # ---- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "card") -> "ModelCard":
        card = _build(cls, data, where)
        card.validate(where)
        return card

    @classmethod
    def from_json(cls, text: str, where: str = "card") -> "ModelCard":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, a 5000-digit integer, absurd nesting
            detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
            raise CardError(f"{where}: not valid JSON ({detail}). Re-export the model to write a fresh card.") from None
        if not isinstance(data, dict):
            raise CardError(f"{where}: a card is a JSON object, got {type(data).__name__}.")
        return cls.from_dict(data, where)

    # ---- validation ------------------------------------------------------------------------------
    def validate(self, where: str = "card") -> None:
        """Check the type and range of every field the runtime relies on; the error names the bad field.

        A card comes from a file that may be damaged or hand-edited, so nothing here trusts a value's
        type: a halo of ``"8"``, ``null`` or ``NaN`` is a CardError, never a TypeError in the tiler.
        """
        _check_int(self.schema_version, f"{where}.schema_version", 1, None)
        if self.schema_version > SCHEMA_VERSION:
            raise CardError(
                f"{where}.schema_version is {self.schema_version}, newer than this ScopeRT understands "
                f"({SCHEMA_VERSION}). Upgrade scopert."
            )
        for label in ("family", "name"):
            if not isinstance(getattr(self, label), str):
                raise CardError(f"{where}.{label} must be a string, got {getattr(self, label)!r}. {_REEXPORT}")
        for label, spec in (("input", self.input), ("output", self.output)):
            _check_spec(spec, f"{where}.{label}")
        if self.input.spatial_axes != self.output.spatial_axes:
            raise CardError(
                f"{where}: input spatial axes {self.input.spatial_axes!r} differ from output {self.output.spatial_axes!r}."
            )
        if "t" in self.input.axes and not self.input.time_window:
            raise CardError(f"{where}.input.time_window is required when the input has a time axis ('t').")
        if not isinstance(self.tile_invariant, bool):
            raise CardError(f"{where}.tile_invariant must be true or false, got {self.tile_invariant!r}.")
        tiled = "".join(a for a in self.input.axes if a not in "bc")
        _check_axis_map(self.halo, f"{where}.halo", tiled, lambda v, w: _check_int(v, w, 0, MAX_HALO))
        _check_axis_map(self.default_tile, f"{where}.default_tile", tiled,
                        lambda v, w: _check_int(v, w, 1, MAX_TILE))
        _check_normalization(self.normalization, f"{where}.normalization")
        for label in ("postprocess", "precision", "verification", "training_config"):
            if not isinstance(getattr(self, label), dict):
                raise CardError(f"{where}.{label} must be an object, got {getattr(self, label)!r}. {_REEXPORT}")
        _check_choice(self.postprocess, "kind", POSTPROCESS_KINDS, f"{where}.postprocess")
        _check_choice(self.precision, "mode", PRECISION_MODES, f"{where}.precision")
        check = self.verification.get("onnx_vs_torch")
        if check is not None:
            if not isinstance(check, dict):
                raise CardError(f"{where}.verification.onnx_vs_torch must be an object, got {check!r}. {_REEXPORT}")
            if "max_abs_error" in check:
                _check_number(check["max_abs_error"], f"{where}.verification.onnx_vs_torch.max_abs_error", 0.0)
        for label in ("path", "sha256", "format"):
            if not isinstance(getattr(self.source, label), str):
                raise CardError(f"{where}.source.{label} must be a string. {_REEXPORT}")
        if not isinstance(self.notes, str):
            raise CardError(f"{where}.notes must be a string, got {type(self.notes).__name__}.")

    # ---- storage -----------------------------------------------------------------------------------
    def write_sidecar(self, model_path: str | os.PathLike) -> Path:
        """Write ``<model_path>.card.json`` atomically and return its path."""
        path = sidecar_path(model_path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    def embed(self, onnx_model: Any) -> None:
        """Store the card in an ``onnx.ModelProto``'s metadata_props (replacing an older card)."""
        props = onnx_model.metadata_props
        for i in reversed(range(len(props))):
            if props[i].key == METADATA_KEY:
                del props[i]
        entry = props.add()
        entry.key = METADATA_KEY
        entry.value = self.to_json(indent=None)


def sidecar_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def read_sidecar(model_path: str | os.PathLike) -> ModelCard | None:
    path = sidecar_path(model_path)
    if not path.exists():
        return None
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CardError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); the card is damaged. "
                        "Re-export the model (or rebuild the engine) to write a fresh card.") from None
    except OSError as exc:
        raise CardError(f"{path} cannot be read ({exc.strerror or exc}); check its permissions, or re-export "
                        "the model to write a fresh card.") from None
    return ModelCard.from_json(text, where=str(path))


def card_from_metadata(metadata: dict[str, str], where: str) -> ModelCard | None:
    """Read a card from an ONNX metadata map (as ONNX Runtime's ``custom_metadata_map`` returns it)."""
    text = metadata.get(METADATA_KEY)
    return None if text is None else ModelCard.from_json(text, where=where)


def _check_axes(axes: str, where: str) -> None:
    if not isinstance(axes, str) or not axes:
        raise CardError(f"{where} must be a non-empty string such as 'bczyx', got {axes!r}.")
    bad = set(axes) - KNOWN_AXES
    if bad or len(set(axes)) != len(axes):
        raise CardError(f"{where} = {axes!r}: use each of the letters b, t, c, z, y, x at most once.")
    if axes[0] != "b":
        raise CardError(f"{where} = {axes!r}: the first model axis must be the batch axis 'b'.")
    if not set(axes) & set(SPATIAL_AXES):
        raise CardError(f"{where} = {axes!r}: a model needs at least one spatial axis (z, y or x).")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(value: Any, where: str, lo: int, hi: int | None) -> None:
    """An integer (not a bool, not a float) in [lo, hi]."""
    if not _is_int(value):
        raise CardError(f"{where} must be an integer, got {value!r}. {_REEXPORT}")
    if value < lo or (hi is not None and value > hi):
        limit = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise CardError(f"{where} = {value} is out of range; it must be {limit}. {_REEXPORT}")


def _check_number(value: Any, where: str, lo: float | None = None, hi: float | None = None,
                  lo_open: bool = False) -> None:
    """A finite real number (int or float, not a bool) in [lo, hi] (or (lo, hi] when ``lo_open``)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise CardError(f"{where} must be a finite number, got {value!r}. {_REEXPORT}")
    if lo is not None and (value <= lo if lo_open else value < lo) or hi is not None and value > hi:
        lower = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        upper = "" if hi is None else f"<= {hi}"
        raise CardError(f"{where} = {value} is out of range; it must be {' and '.join(filter(None, (lower, upper)))}. "
                        f"{_REEXPORT}")


def _check_axis_map(mapping: Any, where: str, allowed: str, check: Any) -> None:
    """A {axis letter: value} object whose keys are axes in ``allowed`` and whose values pass ``check``."""
    if not isinstance(mapping, dict):
        raise CardError(f"{where} must be an object keyed by axis letter, got {mapping!r}. {_REEXPORT}")
    for ax, value in mapping.items():
        if not isinstance(ax, str) or ax not in allowed or len(ax) != 1:
            raise CardError(f"{where} has the key {ax!r}, which is not one of the tiled axes {allowed!r}. "
                            f"{_REEXPORT}")
        check(value, f"{where}[{ax!r}]")


def _check_spec(spec: Any, where: str) -> None:
    if not isinstance(spec.name, str) or not spec.name:
        raise CardError(f"{where}.name must be the model tensor's name (a non-empty string), got {spec.name!r}.")
    _check_axes(spec.axes, f"{where}.axes")
    if spec.dtype not in TENSOR_DTYPES:
        raise CardError(f"{where}.dtype is {spec.dtype!r}; expected one of {', '.join(TENSOR_DTYPES)}. {_REEXPORT}")
    _check_int(spec.channels, f"{where}.channels", 1, MAX_CHANNELS)
    tiled = "".join(a for a in spec.axes if a not in "bc")
    _check_axis_map(spec.divisor, f"{where}.divisor", tiled, lambda v, w: _check_int(v, w, 1, MAX_DIVISOR))
    _check_axis_map(spec.scale, f"{where}.scale", tiled,
                    lambda v, w: _check_number(v, w, 1.0 / MAX_SCALE, MAX_SCALE))
    if spec.time_window is not None:
        _check_int(spec.time_window, f"{where}.time_window", 1, MAX_TIME_WINDOW)
    _check_axis_map(spec.fixed, f"{where}.fixed", "b" + tiled, lambda v, w: _check_int(v, w, 1, 1 << 20))


def _check_normalization(n: Any, where: str) -> None:
    if n.kind not in NORMALIZATION_KINDS:
        raise CardError(f"{where}.kind is {n.kind!r}; expected one of {NORMALIZATION_KINDS}.")
    for label in ("clip", "per_frame", "symmetric"):
        if not isinstance(getattr(n, label), bool):
            raise CardError(f"{where}.{label} must be true or false, got {getattr(n, label)!r}. {_REEXPORT}")
    _check_number(n.pmin, f"{where}.pmin", 0.0, 100.0)
    _check_number(n.pmax, f"{where}.pmax", 0.0, 100.0)
    _check_number(n.eps, f"{where}.eps", 0.0)
    _check_number(n.offset, f"{where}.offset")
    _check_number(n.scale, f"{where}.scale")
    if n.kind == "percentile" and not n.pmin < n.pmax:
        raise CardError(f"{where}: need 0 <= pmin < pmax <= 100, got pmin={n.pmin}, pmax={n.pmax}.")
    if n.kind == "fixed" and n.scale == 0:
        raise CardError(f"{where}.scale is 0; a fixed normalization divides by it. {_REEXPORT}")


def _check_choice(mapping: dict, key: str, choices: tuple[str, ...], where: str) -> None:
    if key in mapping and mapping[key] not in choices:
        raise CardError(f"{where}.{key} is {mapping[key]!r}; this ScopeRT knows {', '.join(choices)}. "
                        "Upgrade scopert, or re-export the model with this version.")


def _build(cls: type, data: Any, where: str) -> Any:
    """Build a (nested) dataclass from a dict, rejecting unknown and missing fields by name."""
    if not isinstance(data, dict):
        raise CardError(f"{where} must be an object, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CardError(f"{where}: unknown field {unknown[0]!r}. Known fields: {', '.join(fields)}.")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CardError(f"{where}.{name} is missing; it is required.")
            continue
        value = data[name]
        nested = _NESTED.get((cls.__name__, name))
        if nested:
            kwargs[name] = _build(nested, value, f"{where}.{name}")
        else:
            _check_type(value, str(f.type), f"{where}.{name}")
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        raise CardError(f"{where}: {exc}") from None


_SIMPLE_TYPES = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float)}


def _check_type(value: Any, annotation: str, where: str) -> None:
    """Reject a JSON value whose type does not fit the field's annotation (e.g. ``"3"`` for an int)."""
    if value is None and annotation.endswith("| None"):
        return
    base = annotation.split("|")[0].strip()
    if base.startswith("dict"):
        ok = isinstance(value, dict)
    elif base in _SIMPLE_TYPES:
        ok = isinstance(value, _SIMPLE_TYPES[base]) and not (base != "bool" and isinstance(value, bool))
    else:
        ok = True
    if not ok:
        raise CardError(f"{where} has the wrong type: expected {annotation}, got {type(value).__name__} ({value!r}).")


_NESTED = {
    ("ModelCard", "input"): TensorSpec,
    ("ModelCard", "output"): TensorSpec,
    ("ModelCard", "normalization"): Normalization,
    ("ModelCard", "source"): Source,
}
