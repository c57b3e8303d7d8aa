"""OME-Zarr output (NGFF 0.4 on Zarr format 2): one multiscale image, level ``0`` at full resolution.

Why 0.4 and Zarr v2: Fiji (MoBIE / n5-viewer), napari-ome-zarr, QuPath and ome-zarr-py all read NGFF 0.4; readers of
0.5 (Zarr v3) are still catching up. NGFF 0.4 fixes the axis order (time, channel, then space: ``tczyx``), requires
``/`` chunk keys and allows 2 to 5 dimensions, so outputs always take that order.

The store is created complete (group, metadata, an empty level-0 array) before any data arrives; writers then fill
regions. ``OmeZarrWriter`` does that at a temporary name and renames it only when every region was written, so a
failed or interrupted run leaves nothing under the final name. ``create_ome_zarr`` creates a store in place for
callers (a Dask client) that fill it from several processes and keep their own ledger of finished regions.

Imports numpy, the standard library, scopert and (lazily) zarr; never torch or onnx.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from scopert.errors import ConfigError, OutputError
from scopert.runtime.io.atomic import atomic_path, finish_atomic

log = logging.getLogger(__name__)

NGFF_VERSION = "0.4"
NGFF_ORDER = "tczyx"
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
LEVEL0 = "0"


def ngff_axes(axes: str) -> str:
    """``axes`` in the order NGFF 0.4 requires (t, c, z, y, x)."""
    return "".join(a for a in NGFF_ORDER if a in axes)


def default_chunks(shape: tuple[int, ...], axes: str) -> tuple[int, ...]:
    """One plane deep along t/c/z, up to 512 along y and x: reads of a plane or a tile touch few chunks."""
    return tuple(min(n, 512) if a in "yx" else 1 for a, n in zip(axes, shape))


def multiscales(axes: str, name: str, scale: dict[str, float] | None = None,
                units: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The NGFF 0.4 ``multiscales`` attribute for one level ``0`` with the given scale (and unit) per axis."""
    scale, units = scale or {}, units or {}
    return [{
        "version": NGFF_VERSION,
        "name": name,
        "axes": [{"name": a, "type": _AXIS_TYPES[a], **({"unit": units[a]} if a in units else {})} for a in axes],
        "datasets": [{"path": LEVEL0, "coordinateTransformations": [
            {"type": "scale", "scale": [float(scale.get(a, 1.0)) for a in axes]}]}],
    }]


def _zarr() -> Any:
    try:
        import zarr
    except ImportError as e:
        raise ConfigError("writing .zarr needs the 'zarr' package, which is not installed; "
                          "pip install 'scopert[dist]' (or pip install zarr), or write .tif/.h5 instead") from e
    return zarr


def _check(shape: tuple[int, ...], axes: str) -> None:
    if axes != ngff_axes(axes) or len(axes) != len(shape) or not 2 <= len(axes) <= 5:
        raise ConfigError(f"OME-Zarr (NGFF {NGFF_VERSION}) needs 2 to 5 axes in t, c, z, y, x order; got {axes!r} "
                          f"for shape {shape}")


def create_ome_zarr(path: str | os.PathLike[str], shape: tuple[int, ...], dtype: Any, axes: str,
                    chunks: tuple[int, ...] | None = None, name: str | None = None,
                    scale: dict[str, float] | None = None, attrs: dict[str, Any] | None = None,
                    physical: Any = None, channel_names: list[str] | None = None) -> Any:
    """Create an OME-Zarr group at ``path`` with an empty level-0 array; return that array (zarr.Array).

    ``physical`` (PhysicalSizes) gives the scale in physical units with the axes' units; without it ``scale`` is
    relative to the input's pixels. ``channel_names`` become the ``omero`` channel labels."""
    zarr = _zarr()
    path = Path(path)
    shape = tuple(int(n) for n in shape)
    _check(shape, axes)
    chunks = tuple(int(c) for c in (chunks or default_chunks(shape, axes)))
    try:
        if int(zarr.__version__.split(".")[0]) >= 3:
            group = zarr.open_group(str(path), mode="w", zarr_format=2)
            array = group.create_array(LEVEL0, shape=shape, dtype=np.dtype(dtype), chunks=chunks, fill_value=0,
                                       chunk_key_encoding={"name": "v2", "separator": "/"})
        else:  # zarr 2
            group = zarr.open_group(str(path), mode="w")
            array = group.create_dataset(LEVEL0, shape=shape, dtype=np.dtype(dtype), chunks=chunks, fill_value=0,
                                         dimension_separator="/")
        if physical:
            scale = {a: physical.get(a) or 1.0 for a in axes}
            units = {a: physical.units[a] for a in axes if physical.get(a) is not None}
        else:
            units = None
        group.attrs["multiscales"] = multiscales(axes, name or path.stem, scale, units)
        if channel_names:
            group.attrs["omero"] = {"channels": [{"label": str(n), "active": True} for n in channel_names]}
        if attrs:
            group.attrs.update(attrs)
    except OSError as e:
        raise OutputError(f"cannot create {path}: {e}; check free disk space and permissions") from e
    log.debug("created OME-Zarr %s: %s %s chunks %s", path, shape, axes, chunks)
    return array


class OmeZarrWriter:
    """Fill a new OME-Zarr image region by region, atomically (temporary name, renamed when complete).

    ``with OmeZarrWriter(out, shape, dtype, 'czyx') as w: w.write((slice(None), slice(0, 8)), block)``.
    Regions must together cover the image; the writer counts written voxels and refuses to keep a store
    with holes (regions may overlap only if the caller rewrites the same values).
    """

    def __init__(self, path: str | os.PathLike[str], shape: tuple[int, ...], dtype: Any, axes: str,
                 chunks: tuple[int, ...] | None = None, name: str | None = None,
                 scale: dict[str, float] | None = None, attrs: dict[str, Any] | None = None,
                 physical: Any = None, channel_names: list[str] | None = None) -> None:
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.axes = axes
        _check(self.shape, axes)
        self._create = dict(chunks=chunks, name=name or self.path.stem, scale=scale, attrs=attrs, physical=physical,
                            channel_names=channel_names)
        self._atomic: Any = None
        self._array: Any = None
        self.voxels_written = 0

    def __enter__(self) -> "OmeZarrWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._array = create_ome_zarr(tmp, self.shape, self.dtype, self.axes, **self._create)
        except BaseException as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def write(self, region: tuple[slice, ...], data: np.ndarray) -> None:
        """Write ``data`` at ``region`` (one slice per axis, in this image's axes)."""
        if self._array is None:
            raise OutputError("OmeZarrWriter.write() called outside its 'with' block; this is a bug")
        try:
            self._array[region] = np.asarray(data, dtype=self.dtype)
        except OSError as e:
            raise OutputError(f"writing {self.path} failed: {e}; check free disk space and permissions") from e
        self.voxels_written += math.prod(np.shape(data))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        failure = exc
        total = math.prod(self.shape)
        if failure is None and self.voxels_written < total:
            failure = OutputError(f"{self.path}: only {self.voxels_written} of {total} voxels were written; "
                                  "the output is incomplete and was not kept")
        self._array = None
        return finish_atomic(self._atomic, failure, exc)


def read_multiscales_level0(group: Any) -> tuple[str, str | None]:
    """(path of the full-resolution array, its axes) from an OME-Zarr group's metadata."""
    ms = group.attrs.get("multiscales")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        raise ValueError("no multiscales metadata")
    first = ms[0]
    datasets = first.get("datasets") or []
    if not datasets or not isinstance(datasets[0], dict) or not isinstance(datasets[0].get("path"), str):
        raise ValueError("multiscales has no datasets")
    names = [a.get("name") if isinstance(a, dict) else a for a in first.get("axes") or []]
    axes = "".join(str(n).lower() for n in names) if names and all(isinstance(n, str) and len(n) == 1
                                                                   for n in names) else None
    return datasets[0]["path"], axes
