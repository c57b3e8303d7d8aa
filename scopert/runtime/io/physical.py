"""Physical pixel sizes and the time interval: what a file says one step along each axis means.

Every reader states them as ``PhysicalSizes`` (axis letter -> size and unit, NGFF's unit names), every writer
stores them in its own format's way: ImageJ (resolution tags, ``unit``, ``spacing``, ``finterval``), OME-XML
(``PhysicalSize*``, ``TimeIncrement``), OME-Zarr (axis units and the level's scale) and HDF5 (``element_size_um``,
the convention of ilastik and pytorch-3dunet, plus ``time_interval_s``). A file that says nothing gets None: sizes
are never invented. Imports the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# NGFF (UDUNITS-2) names and their size in metres or seconds
LENGTH_UNITS = {"angstrom": 1e-10, "nanometer": 1e-9, "micrometer": 1e-6, "millimeter": 1e-3, "centimeter": 1e-2,
                "meter": 1.0, "inch": 0.0254}
TIME_UNITS = {"nanosecond": 1e-9, "microsecond": 1e-6, "millisecond": 1e-3, "second": 1.0, "minute": 60.0,
              "hour": 3600.0}
_ALIASES = {
    "a": "angstrom", "å": "angstrom", "angstrom": "angstrom", "nm": "nanometer", "nanometer": "nanometer",
    "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "micron": "micrometer", "microns": "micrometer",
    "\\u00b5m": "micrometer", "micrometer": "micrometer", "mm": "millimeter", "millimeter": "millimeter",
    "cm": "centimeter", "centimeter": "centimeter", "m": "meter", "meter": "meter", "inch": "inch", "in": "inch",
    "ns": "nanosecond", "us": "microsecond", "µs": "microsecond", "μs": "microsecond", "ms": "millisecond",
    "msec": "millisecond", "s": "second", "sec": "second", "second": "second", "seconds": "second",
    "min": "minute", "minute": "minute", "minutes": "minute", "h": "hour", "hr": "hour", "hour": "hour",
    "nanosecond": "nanosecond", "microsecond": "microsecond", "millisecond": "millisecond",
}
OME_SYMBOLS = {"angstrom": "Å", "nanometer": "nm", "micrometer": "µm", "millimeter": "mm", "centimeter": "cm",
               "meter": "m", "inch": "in", "nanosecond": "ns", "microsecond": "µs", "millisecond": "ms",
               "second": "s", "minute": "min", "hour": "h"}
# ImageJ's own spellings (Calibration); a unit it has no word for is written in micrometres
IMAGEJ_UNITS = {"nanometer": "nm", "micrometer": "micron", "millimeter": "mm", "centimeter": "cm", "meter": "m",
                "inch": "inch"}
SPATIAL = "zyx"


def unit_name(text: Any) -> str | None:
    """The NGFF name of a unit as files spell it ('µm', 'micron', 'nm', 'sec' ...); None for 'pixel' or unknown."""
    if not isinstance(text, str):
        return None
    key = text.strip().lower()
    return _ALIASES.get(key) or _ALIASES.get(key.replace("\\u00b5", "µ"))


def convert(value: float, unit: str, to: str) -> float:
    """``value`` in ``unit`` expressed in ``to`` (both NGFF names of the same kind)."""
    table = LENGTH_UNITS if unit in LENGTH_UNITS else TIME_UNITS
    return value * table[unit] / table[to]


@dataclass(frozen=True)
class PhysicalSizes:
    """Size of one step along each axis that the file states: z, y, x in lengths, t in time."""

    sizes: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", dict(self.sizes))  # our own copies: the checks below drop entries
        object.__setattr__(self, "units", dict(self.units))
        for ax in list(self.sizes):
            value = self.sizes[ax]
            if ax not in "tzyx" or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0 \
                    or self.units.get(ax) not in (TIME_UNITS if ax == "t" else LENGTH_UNITS):
                del self.sizes[ax]  # what cannot be a size is not one (0, NaN, 'pixel')
        for ax in list(self.units):
            if ax not in self.sizes:
                del self.units[ax]

    def __bool__(self) -> bool:
        return bool(self.sizes)

    def get(self, ax: str, unit: str | None = None) -> float | None:
        """The size along ``ax`` (in ``unit`` when given), or None when the file did not say."""
        if ax not in self.sizes:
            return None
        return self.sizes[ax] if unit is None else convert(self.sizes[ax], self.units[ax], unit)

    def for_axes(self, axes: str) -> PhysicalSizes:
        """Only the axes of ``axes`` (an output without z drops the z spacing)."""
        keep = [a for a in self.sizes if a in axes]
        return PhysicalSizes({a: self.sizes[a] for a in keep}, {a: self.units[a] for a in keep})

    def scaled(self, scale: dict[str, float]) -> PhysicalSizes:
        """Sizes after a model that returns ``scale`` output pixels per input pixel along an axis (2: half size)."""
        return PhysicalSizes({a: v / float(scale.get(a, 1.0)) for a, v in self.sizes.items()}, dict(self.units))

    def common_length_unit(self) -> str | None:
        """One unit for every spatial axis (ImageJ stores one): the x axis's, else the first stated one."""
        for ax in "xyz":
            if ax in self.sizes:
                return self.units[ax]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": dict(self.sizes), "units": dict(self.units)}

    def describe(self) -> str:
        return ", ".join(f"{a} {self.sizes[a]:g} {self.units[a]}" for a in "tzyx" if a in self.sizes) or "none"


def from_ome_pixels(pixels: dict[str, Any]) -> PhysicalSizes:
    """From the attributes of an OME-XML ``Pixels`` element (units default to µm and s, as the schema says)."""
    sizes, units = {}, {}
    for ax in SPATIAL:
        key = f"PhysicalSize{ax.upper()}"
        if key in pixels:
            sizes[ax], units[ax] = _float(pixels[key]), unit_name(pixels.get(key + "Unit", "µm"))
    if "TimeIncrement" in pixels:
        sizes["t"], units["t"] = _float(pixels["TimeIncrement"]), unit_name(pixels.get("TimeIncrementUnit", "s"))
    return PhysicalSizes(sizes, units)


def to_ome_metadata(physical: PhysicalSizes | None, axes: str) -> dict[str, Any]:
    """tifffile's OME metadata keys for the axes an OME-TIFF holds."""
    out: dict[str, Any] = {}
    if not physical:
        return out
    for ax in axes:
        value = physical.get(ax)
        if value is None:
            continue
        symbol = OME_SYMBOLS[physical.units[ax]]
        if ax == "t":
            out["TimeIncrement"], out["TimeIncrementUnit"] = value, symbol
        elif ax in SPATIAL:
            out[f"PhysicalSize{ax.upper()}"], out[f"PhysicalSize{ax.upper()}Unit"] = value, symbol
    return out


def from_imagej(metadata: dict[str, Any] | None, resolution: tuple[Any, Any] | None, axes: str) -> PhysicalSizes:
    """From an ImageJ description (``unit``, ``spacing``, ``finterval``/``tunit``) and the X/YResolution tags."""
    metadata = metadata or {}
    sizes, units = {}, {}
    unit = unit_name(metadata.get("unit"))
    if unit in LENGTH_UNITS:
        for ax, res in zip("xy", resolution or ()):
            per_unit = _ratio(res)
            if per_unit:
                sizes[ax], units[ax] = 1.0 / per_unit, unit
        if "z" in axes and metadata.get("spacing") is not None:
            sizes["z"], units["z"] = _float(metadata["spacing"]), unit
    if "t" in axes and metadata.get("finterval") is not None:
        sizes["t"], units["t"] = _float(metadata["finterval"]), unit_name(metadata.get("tunit", "sec")) or "second"
    return PhysicalSizes(sizes, units)


def to_imagej(physical: PhysicalSizes | None, axes: str) -> tuple[tuple[float, float] | None, dict[str, Any]]:
    """(resolution for tifffile, ImageJ metadata keys) for the axes an ImageJ hyperstack holds."""
    if not physical:
        return None, {}
    meta: dict[str, Any] = {}
    resolution = None
    unit = physical.common_length_unit()
    if unit is not None:
        ij_unit = unit if unit in IMAGEJ_UNITS else "micrometer"
        x = physical.get("x", ij_unit) or physical.get("y", ij_unit)
        y = physical.get("y", ij_unit) or x
        if x is not None:
            resolution = (1.0 / x, 1.0 / y)
            meta["unit"] = IMAGEJ_UNITS[ij_unit]
        if "z" in axes and physical.get("z") is not None:
            meta["spacing"] = physical.get("z", ij_unit)
    if "t" in axes and physical.get("t") is not None:
        meta["finterval"] = physical.get("t", "second")
        meta["tunit"] = "sec"
    return resolution, meta


def from_hdf5_attrs(attrs: Any, axes: str | None) -> PhysicalSizes:
    """``element_size_um`` (one per spatial axis, or one per axis) and ``time_interval_s`` of an HDF5 dataset."""
    sizes, units = {}, {}
    raw = attrs.get("element_size_um")
    if raw is not None and axes:
        values = [_float(v) for v in _as_list(raw)]
        spatial = [a for a in axes if a in SPATIAL]
        names = list(axes) if len(values) == len(axes) else spatial if len(values) == len(spatial) else []
        for ax, value in zip(names, values):
            if ax in SPATIAL:
                sizes[ax], units[ax] = value, "micrometer"
    if "time_interval_s" in attrs and axes and "t" in axes:
        sizes["t"], units["t"] = _float(attrs["time_interval_s"]), "second"
    return PhysicalSizes(sizes, units)


def to_hdf5_attrs(physical: PhysicalSizes | None, axes: str) -> dict[str, Any]:
    """HDF5 attributes: ``element_size_um`` over the dataset's spatial axes (all stated) and ``time_interval_s``."""
    out: dict[str, Any] = {}
    if not physical:
        return out
    spatial = [a for a in axes if a in SPATIAL]
    if spatial and all(physical.get(a) is not None for a in spatial):
        out["element_size_um"] = [physical.get(a, "micrometer") for a in spatial]
    if "t" in axes and physical.get("t") is not None:
        out["time_interval_s"] = physical.get("t", "second")
    return out


def from_ngff(multiscale: dict[str, Any]) -> PhysicalSizes:
    """From an NGFF ``multiscales`` entry: axis units and the first dataset's scale transformation."""
    axes = multiscale.get("axes") or []
    datasets = multiscale.get("datasets") or [{}]
    scale = None
    for transform in (datasets[0] or {}).get("coordinateTransformations") or []:
        if isinstance(transform, dict) and transform.get("type") == "scale":
            scale = transform.get("scale")
    sizes, units = {}, {}
    if not isinstance(scale, list) or len(scale) != len(axes):
        return PhysicalSizes()
    for axis, value in zip(axes, scale):
        if isinstance(axis, dict) and str(axis.get("name", "")).lower() in "tzyx" and unit_name(axis.get("unit")):
            ax = str(axis["name"]).lower()
            sizes[ax], units[ax] = _float(value), unit_name(axis["unit"])
    return PhysicalSizes(sizes, units)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _ratio(value: Any) -> float | None:
    """A TIFF RATIONAL (numerator, denominator) or a number as a float; None for 0/0, 1/1 defaults stay."""
    try:
        if isinstance(value, (tuple, list)):
            num, den = float(value[0]), float(value[1])
            return num / den if den else None
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _as_list(value: Any) -> list[Any]:
    try:
        return list(value)
    except TypeError:
        return [value]
