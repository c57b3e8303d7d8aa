"""The ModelCard: the one contract between training, export and runtime.

A versioned JSON document stored inside the ONNX file (``metadata_props`` key ``scopert.card``) and as a
sidecar ``<model>.card.json`` next to engines. The runtime needs nothing else to run a model correctly.
Validation happens on load and names the bad field. Imports only the standard library (``onnx`` is
imported lazily by the two helpers that touch an ONNX ModelProto).
"""

from __future__ import annotations

import dataclasses
import json
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
        except json.JSONDecodeError as exc:
            raise CardError(f"{where}: not valid JSON ({exc}). Re-export the model to write a fresh card.") from None
        if not isinstance(data, dict):
            raise CardError(f"{where}: a card is a JSON object, got {type(data).__name__}.")
        return cls.from_dict(data, where)

    # ---- validation ------------------------------------------------------------------------------
    def validate(self, where: str = "card") -> None:
        """Check every field the runtime relies on; the error names the bad field."""
        if self.schema_version > SCHEMA_VERSION:
            raise CardError(
                f"{where}.schema_version is {self.schema_version}, newer than this ScopeRT understands "
                f"({SCHEMA_VERSION}). Upgrade scopert."
            )
        for label, spec in (("input", self.input), ("output", self.output)):
            _check_axes(spec.axes, f"{where}.{label}.axes")
            if spec.channels < 1:
                raise CardError(f"{where}.{label}.channels must be >= 1, got {spec.channels}.")
            for ax, d in spec.divisor.items():
                if ax not in spec.axes or int(d) < 1:
                    raise CardError(f"{where}.{label}.divisor[{ax!r}] = {d} is invalid (axis not in {spec.axes!r} or < 1).")
            for ax, s in spec.scale.items():
                if ax not in spec.axes or float(s) <= 0:
                    raise CardError(f"{where}.{label}.scale[{ax!r}] = {s} is invalid (axis not in {spec.axes!r} or <= 0).")
            if spec.time_window is not None and spec.time_window < 1:
                raise CardError(f"{where}.{label}.time_window must be >= 1, got {spec.time_window}.")
        if self.input.spatial_axes != self.output.spatial_axes:
            raise CardError(
                f"{where}: input spatial axes {self.input.spatial_axes!r} differ from output {self.output.spatial_axes!r}."
            )
        if "t" in self.input.axes and not self.input.time_window:
            raise CardError(f"{where}.input.time_window is required when the input has a time axis ('t').")
        for ax, h in self.halo.items():
            if ax not in self.input.axes or ax in "bc" or int(h) < 0:
                raise CardError(f"{where}.halo[{ax!r}] = {h} is invalid (must be a tiled axis of the input, >= 0).")
        if self.normalization.kind not in NORMALIZATION_KINDS:
            raise CardError(
                f"{where}.normalization.kind is {self.normalization.kind!r}; expected one of {NORMALIZATION_KINDS}."
            )
        n = self.normalization
        if n.kind == "percentile" and not (0 <= n.pmin < n.pmax <= 100):
            raise CardError(f"{where}.normalization: need 0 <= pmin < pmax <= 100, got pmin={n.pmin}, pmax={n.pmax}.")

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
    return ModelCard.from_json(path.read_text(), where=str(path))


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
