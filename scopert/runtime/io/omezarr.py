"""OME-Zarr output: one multiscale image, level ``0`` at full resolution, then a pyramid halving y and x.

NGFF 0.4 (Zarr format 2, ``.zattrs``) is the default: Fiji (MoBIE, n5-viewer), napari-ome-zarr, QuPath and
ome-zarr-py all read it; NGFF 0.5 (Zarr format 3, ``zarr.json`` with an ``ome`` key) is written on request
(``ngff="0.5"``) for readers that have caught up (ome-zarr-py 0.10+, napari-ome-zarr 0.6+). Both fix the axis order
(time, channel, then space: ``tczyx``) and allow 2 to 5 dimensions, so outputs always take that order.

The store is created complete (group, metadata, empty arrays for every level) before any data arrives; writers
fill level 0 by regions, and ``fill_pyramid`` computes each coarser level from the one before it, a bounded block
at a time, once level 0 is complete. Levels go down until y and x fit in ``PYRAMID_STOP`` pixels (a viewer's
tile), so a viewer opens a terabyte output at its coarsest level first. ``OmeZarrWriter`` writes at a temporary
name and renames only when every region was written, so a failed or interrupted run leaves nothing under the final
name. ``create_ome_zarr`` creates a store in place for callers (a Dask client, an acquisition) that fill it
themselves.

Imports numpy, the standard library, scopert and (lazily) zarr; never torch or onnx.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from scopert.errors import ConfigError, OutputError
from scopert.runtime.io.atomic import atomic_path, finish_atomic

log = logging.getLogger(__name__)

NGFF_VERSIONS = ("0.4", "0.5")
NGFF_DEFAULT = "0.4"
NGFF_ORDER = "tczyx"
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
LEVEL0 = "0"
PYRAMID_STOP = 256  # the coarsest level's y and x fit in this (one viewer tile)
_PYRAMID_BLOCK = 2048  # y/x pixels of level k-1 read at once while computing level k (bounded memory)


def ngff_axes(axes: str) -> str:
    """``axes`` in the order NGFF requires (t, c, z, y, x)."""
    return "".join(a for a in NGFF_ORDER if a in axes)


def default_chunks(shape: tuple[int, ...], axes: str) -> tuple[int, ...]:
    """One plane deep along t/c/z, up to 512 along y and x: reads of a plane or a tile touch few chunks."""
    return tuple(min(n, 512) if a in "yx" else 1 for a, n in zip(axes, shape))


def pyramid_shapes(shape: tuple[int, ...], axes: str, stop: int = PYRAMID_STOP) -> list[tuple[int, ...]]:
    """Level 0's shape, then y and x halved (rounded up) per level until both fit in ``stop``."""
    levels = [tuple(int(n) for n in shape)]
    while any(n > stop for a, n in zip(axes, levels[-1]) if a in "yx"):
        levels.append(tuple(-(-n // 2) if a in "yx" else n for a, n in zip(axes, levels[-1])))
    return levels


def multiscales(axes: str, name: str, scale: dict[str, float] | None = None,
                units: dict[str, str] | None = None, levels: int = 1, ngff: str = NGFF_DEFAULT) -> list[dict[str, Any]]:
    """The NGFF ``multiscales`` entry: ``levels`` datasets, level k scaled by 2**k along y and x."""
    scale, units = scale or {}, units or {}
    entry: dict[str, Any] = {"version": ngff} if ngff == "0.4" else {}  # 0.5 puts the version beside it
    entry.update({
        "name": name,
        "axes": [{"name": a, "type": _AXIS_TYPES[a], **({"unit": units[a]} if a in units else {})} for a in axes],
        "datasets": [{"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [float(scale.get(a, 1.0)) * (2 ** k if a in "yx" else 1) for a in axes]}]}
            for k in range(levels)],
    })
    return [entry]


def ome_attrs(attrs: Any) -> dict[str, Any]:
    """The OME metadata of a group's attributes: NGFF 0.5 nests it under ``ome``, 0.4 keeps it at the top."""
    ome = attrs.get("ome") if hasattr(attrs, "get") else None
    return dict(ome) if isinstance(ome, dict) else dict(attrs)


def check_ngff(ngff: str) -> str:
    if ngff not in NGFF_VERSIONS:
        raise ConfigError(f"--ngff {ngff}: use 0.4 (Zarr v2, read by Fiji/MoBIE, napari and ome-zarr-py) or 0.5 "
                          "(Zarr v3).")
    return ngff


def _zarr() -> Any:
    try:
        import zarr
    except ImportError as e:
        raise ConfigError("writing .zarr needs the 'zarr' package, which is not installed; "
                          "pip install 'scopert[dist]' (or pip install zarr), or write .tif/.h5 instead") from e
    return zarr


def _check(shape: tuple[int, ...], axes: str) -> None:
    if axes != ngff_axes(axes) or len(axes) != len(shape) or not 2 <= len(axes) <= 5:
        raise ConfigError(f"OME-Zarr (NGFF) needs 2 to 5 axes in t, c, z, y, x order; got {axes!r} "
                          f"for shape {shape}")


def _create_group(zarr: Any, path: Path, ngff: str) -> Any:
    if int(zarr.__version__.split(".")[0]) >= 3:
        return zarr.open_group(str(path), mode="w", zarr_format=2 if ngff == "0.4" else 3)
    if ngff != "0.4":
        raise ConfigError(f"NGFF {ngff} needs zarr 3 (Zarr format 3); pip install 'zarr>=3', or write --ngff 0.4")
    return zarr.open_group(str(path), mode="w")


def _create_level(group: Any, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...], axes: str,
                  ngff: str) -> Any:
    chunks = tuple(min(c, n) for c, n in zip(chunks, shape))
    if not hasattr(group, "create_array"):  # zarr 2
        return group.create_dataset(name, shape=shape, dtype=np.dtype(dtype), chunks=chunks, fill_value=0,
                                    dimension_separator="/")
    if ngff == "0.4":
        return group.create_array(name, shape=shape, dtype=np.dtype(dtype), chunks=chunks, fill_value=0,
                                  chunk_key_encoding={"name": "v2", "separator": "/"})
    return group.create_array(name, shape=shape, dtype=np.dtype(dtype), chunks=chunks, fill_value=0,
                              dimension_names=list(axes))


def create_ome_zarr(path: str | os.PathLike[str], shape: tuple[int, ...], dtype: Any, axes: str,
                    chunks: tuple[int, ...] | None = None, name: str | None = None,
                    scale: dict[str, float] | None = None, attrs: dict[str, Any] | None = None,
                    physical: Any = None, channel_names: list[str] | None = None, ngff: str = NGFF_DEFAULT,
                    pyramid: bool = True) -> Any:
    """Create an OME-Zarr image at ``path`` with empty arrays for every level; return level 0 (a zarr.Array).

    ``physical`` (PhysicalSizes) gives the scale in physical units with the axes' units; without it ``scale`` is
    relative to the input's pixels. ``channel_names`` become the ``omero`` channel labels. Fill level 0, then
    call ``fill_pyramid``."""
    zarr = _zarr()
    path = Path(path)
    shape = tuple(int(n) for n in shape)
    _check(shape, axes)
    check_ngff(ngff)
    chunks = tuple(int(c) for c in (chunks or default_chunks(shape, axes)))
    shapes = pyramid_shapes(shape, axes) if pyramid else [shape]
    try:
        group = _create_group(zarr, path, ngff)
        arrays = [_create_level(group, str(k), level, dtype, chunks, axes, ngff) for k, level in enumerate(shapes)]
        if physical:
            scale = {a: physical.get(a) or 1.0 for a in axes}
            units = {a: physical.units[a] for a in axes if physical.get(a) is not None}
        else:
            units = None
        ome: dict[str, Any] = {"multiscales": multiscales(axes, name or path.stem, scale, units, len(shapes), ngff)}
        if channel_names:
            ome["omero"] = {"channels": [{"label": str(n), "active": True} for n in channel_names]}
        if ngff == "0.4":
            group.attrs.update(ome)
        else:
            group.attrs["ome"] = {"version": ngff, **ome}
        if attrs:
            group.attrs.update(attrs)
    except OSError as e:
        raise OutputError(f"cannot create {path}: {e}; check free disk space and permissions") from e
    log.debug("created OME-Zarr %s (NGFF %s): %s %s chunks %s, %d levels", path, ngff, shape, axes, chunks,
              len(shapes))
    return arrays[0]


def _halve(block: np.ndarray, axes: str, dtype: np.dtype) -> np.ndarray:
    """Mean of 2x2 pixels along y and x (edge pixels of an odd size are averaged with themselves)."""
    data = block.astype(np.float32)
    for i, a in enumerate(axes):
        if a in "yx":
            if data.shape[i] % 2:
                data = np.concatenate([data, data.take([-1], axis=i)], axis=i)
            data = 0.5 * (data.take(range(0, data.shape[i], 2), axis=i) + data.take(range(1, data.shape[i], 2), axis=i))
    if np.issubdtype(dtype, np.integer):
        data = np.rint(data)
    return data.astype(dtype)


def fill_pyramid(path: str | os.PathLike[str]) -> int:
    """Compute levels 1.. of the OME-Zarr image at ``path`` from level 0, one plane and 2048x2048 pixels at a
    time (memory does not grow with the image). Returns the number of levels filled."""
    zarr = _zarr()
    group = zarr.open_group(str(path), mode="r+")
    entry = ome_attrs(group.attrs)["multiscales"][0]
    axes = "".join(a["name"] for a in entry["axes"])
    paths = [d["path"] for d in entry["datasets"]]
    lead = [i for i, a in enumerate(axes) if a not in "yx"]
    for prev_name, name in zip(paths, paths[1:]):
        prev, level = group[prev_name], group[name]
        ranges = [range(level.shape[i]) if i in lead else
                  range(0, level.shape[i], _PYRAMID_BLOCK // 2) for i in range(len(axes))]
        for start in itertools.product(*ranges):
            src, dst = [], []
            for i, s in enumerate(start):
                if i in lead:
                    src.append(slice(s, s + 1))
                    dst.append(slice(s, s + 1))
                else:
                    stop = min(s + _PYRAMID_BLOCK // 2, level.shape[i])
                    src.append(slice(2 * s, min(2 * stop, prev.shape[i])))
                    dst.append(slice(s, stop))
            level[tuple(dst)] = _halve(np.asarray(prev[tuple(src)]), axes, level.dtype)
    return len(paths) - 1


class OmeZarrWriter:
    """Fill a new OME-Zarr image region by region, atomically (temporary name, renamed when complete).

    ``with OmeZarrWriter(out, shape, dtype, 'czyx') as w: w.write((slice(None), slice(0, 8)), block)``.
    Regions must together cover the image; the writer counts written voxels and refuses to keep a store
    with holes (regions may overlap only if the caller rewrites the same values).
    """

    def __init__(self, path: str | os.PathLike[str], shape: tuple[int, ...], dtype: Any, axes: str,
                 chunks: tuple[int, ...] | None = None, name: str | None = None,
                 scale: dict[str, float] | None = None, attrs: dict[str, Any] | None = None,
                 physical: Any = None, channel_names: list[str] | None = None, ngff: str = NGFF_DEFAULT) -> None:
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.axes = axes
        _check(self.shape, axes)
        self._create = dict(chunks=chunks, name=name or self.path.stem, scale=scale, attrs=attrs, physical=physical,
                            channel_names=channel_names, ngff=check_ngff(ngff))
        self._atomic: Any = None
        self._array: Any = None
        self._tmp: Path | None = None
        self.voxels_written = 0

    def __enter__(self) -> "OmeZarrWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._tmp = self._atomic.__enter__()
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
        if failure is None:
            try:
                fill_pyramid(self._tmp)
            except BaseException as e:  # noqa: BLE001 - the temporary is removed, the error raised
                failure = e
        self._array = None
        return finish_atomic(self._atomic, failure, exc)


def read_multiscales_level0(group: Any) -> tuple[str, str | None]:
    """(path of the full-resolution array, its axes) from an OME-Zarr group's metadata."""
    ms = ome_attrs(group.attrs).get("multiscales")
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
