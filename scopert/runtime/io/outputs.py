"""One output image, decided before the run and then filled region by region in any of the formats.

``OutputSpec`` holds everything known before the first tile runs: the format from the suffix, the axes in the
format's own order, shape, dtype, channel names, and the estimated size (checked against free disk space).
``open_writer(spec)`` returns a writer with ``write(region, data)``:

- TIFF (ImageJ hyperstack or OME-TIFF): streamed page by page when regions arrive in order along the file's first
  axis and are whole in the others; otherwise the image is collected and written at the end (``stream=False``).
- HDF5: one chunked, compressed dataset (default ``predictions``) with an ``axes`` attribute.
- Zarr: OME-Zarr (NGFF 0.4), see ``omezarr``.

Every writer writes to a temporary name and renames at the end, so nothing is half-written.
Imports numpy, h5py, tifffile (through the TIFF writer), the standard library and scopert.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from scopert.errors import ConfigError, OutputError, RunError
from scopert.runtime.io.atomic import atomic_path, finish_atomic, partial_path, remove_path
from scopert.runtime.io.image import image_kind
from scopert.runtime.io.omezarr import NGFF_DEFAULT, NGFF_ORDER, OmeZarrWriter
from scopert.runtime.io.physical import PhysicalSizes, to_hdf5_attrs
from scopert.runtime.io.tiff import TiffStreamWriter, write_tiff

TIFF_ORDER = "tzcyx"  # ImageJ hyperstacks store T, Z, C, Y, X; OME-TIFF outputs use the same order
OUTPUT_SUFFIXES = ".tif, .tiff, .ome.tif, .h5, .hdf5, .zarr"
TIFF_FORMATS = ("imagej", "ome")


def output_kind(path: str | os.PathLike[str]) -> str:
    """'tiff', 'hdf5' or 'zarr' from an output name, or an OutputError naming the suffixes ScopeRT writes."""
    try:
        return image_kind(path)
    except Exception:
        raise OutputError(f"output {path} has no image suffix ScopeRT can write; use one of {OUTPUT_SUFFIXES} "
                          "(e.g. -o result.tif)") from None


def file_axes(kind: str, axes: str) -> str:
    """The axes in the order the format stores them: T, Z, C, Y, X for TIFF; t, c, z, y, x (NGFF) otherwise."""
    order = TIFF_ORDER if kind == "tiff" else NGFF_ORDER
    return "".join(a for a in order if a in axes)


def check_format_option(kind: str, fmt: str | None, name: str, ngff: str | None = None) -> None:
    """``-f`` chooses a TIFF flavour, ``--ngff`` an OME-Zarr version: refuse either for another output kind rather
    than ignore it."""
    if kind != "tiff" and fmt is not None:
        raise ConfigError(f"-f/--output_tiff_format {fmt} applies to TIFF outputs, but {name} is {kind.upper()}; "
                          "drop -f or write a .tif.")
    if kind != "zarr" and ngff is not None:
        raise ConfigError(f"--ngff {ngff} applies to OME-Zarr outputs, but {name} is {kind.upper()}; drop --ngff or "
                          "write a .zarr.")


def tiff_format(path: Path, fmt: str | None) -> str:
    """The TIFF flavour: ``fmt`` if given, else OME for a '.ome.tif' name and ImageJ otherwise."""
    if fmt is None:
        return "ome" if path.name.lower().endswith((".ome.tif", ".ome.tiff")) else "imagej"
    if fmt not in TIFF_FORMATS:
        raise ConfigError(f"-f {fmt!r}: use imagej or ome.")
    return fmt


@dataclass
class OutputSpec:
    path: Path
    kind: str  # 'tiff', 'hdf5', 'zarr'
    axes: str  # in the format's order (see file_axes)
    shape: tuple[int, ...]
    dtype: np.dtype
    fmt: str | None = None  # TIFF only: 'imagej' or 'ome'
    channel_names: list[str] | None = None
    dataset: str = "predictions"  # HDF5 only
    scale: dict[str, float] = field(default_factory=dict)  # Zarr: voxel size relative to the input
    attrs: dict[str, Any] = field(default_factory=dict)  # Zarr/HDF5: extra metadata (model name, ...)
    physical: PhysicalSizes | None = None  # the output's pixel sizes and time interval (every format stores them)
    ngff: str = NGFF_DEFAULT  # Zarr only: the NGFF version (0.4: Zarr v2, 0.5: Zarr v3)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


class _Hdf5Writer:
    def __init__(self, spec: OutputSpec) -> None:
        self.spec = spec
        self._atomic: Any = None
        self._file: h5py.File | None = None
        self._ds: Any = None
        self.voxels_written = 0

    def __enter__(self) -> "_Hdf5Writer":
        self._atomic = atomic_path(self.spec.path)
        tmp = self._atomic.__enter__()
        try:
            self._file = h5py.File(tmp, "w")
            chunks = tuple(min(n, 256) if a in "yx" else 1 for a, n in zip(self.spec.axes, self.spec.shape))
            self._ds = self._file.create_dataset(self.spec.dataset, shape=self.spec.shape, dtype=self.spec.dtype,
                                                 chunks=chunks, compression="gzip")
            self._ds.attrs["axes"] = self.spec.axes
            if self.spec.channel_names:
                self._ds.attrs["channel_names"] = [str(n) for n in self.spec.channel_names]
            for key, value in {**to_hdf5_attrs(self.spec.physical, self.spec.axes), **self.spec.attrs}.items():
                self._ds.attrs[key] = value
        except BaseException as e:
            if self._file is not None:
                self._file.close()
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def write(self, region: tuple[slice, ...], data: np.ndarray) -> None:
        try:
            self._ds[region] = data
        except OSError as e:
            raise OutputError(f"writing {self.spec.path} failed: {e}; check free disk space and permissions") from e
        self.voxels_written += math.prod(np.shape(data))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        failure = exc
        try:
            self._file.close()
        except BaseException as e:
            if failure is None:
                failure = OutputError(f"closing {self.spec.path} failed: {e}")
                failure.__cause__ = e  # a full disk stays recognizable as one
        if failure is None and self.voxels_written < math.prod(self.spec.shape):
            failure = RunError(f"{self.spec.path}: only part of the image was written; it was not kept")
        return finish_atomic(self._atomic, failure, exc)


class _TiffWriter:
    """Streams whole slabs along the file's first axis; with ``stream=False`` collects the image first."""

    def __init__(self, spec: OutputSpec, stream: bool) -> None:
        self.spec, self.stream = spec, stream
        self._inner: Any = None
        self._buffer: np.ndarray | None = None
        self._next = 0

    def __enter__(self) -> "_TiffWriter":
        if self.stream:
            self._inner = TiffStreamWriter(self.spec.path, self.spec.shape, self.spec.dtype, self.spec.axes,
                                           fmt=self.spec.fmt, channel_names=self.spec.channel_names,
                                           physical=self.spec.physical)
            self._inner.__enter__()
        else:
            self._buffer = np.zeros(self.spec.shape, self.spec.dtype)
        return self

    def write(self, region: tuple[slice, ...], data: np.ndarray) -> None:
        if self._buffer is not None:
            self._buffer[region] = data
            return
        first = region[0]
        whole = all(s == slice(None) or (s.start in (0, None) and s.stop in (n, None))
                    for s, n in zip(region[1:], self.spec.shape[1:]))
        if first.start != self._next or not whole:
            raise RunError(f"TIFF output {self.spec.path} got region {region} out of order; this is a bug")
        self._inner.write(data)
        self._next = first.stop

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if self._inner is not None:
            return self._inner.__exit__(exc_type, exc, tb)
        if exc is None:
            write_tiff(self.spec.path, self._buffer, self.spec.axes, fmt=self.spec.fmt,
                       channel_names=self.spec.channel_names, physical=self.spec.physical)
        self._buffer = None
        return False


class _NoPartialLeft:
    """Removes a writer's temporary when an interrupt lands inside the writer's own enter or exit.

    Ctrl-C and SIGTERM arrive between any two bytecodes; one that lands while a writer joins its thread or
    renames would escape the writer's own cleanup and leave ``.NAME.partial-<pid>`` behind."""

    def __init__(self, inner: Any, path: Path) -> None:
        self.inner, self.path = inner, path

    def __enter__(self) -> Any:
        try:
            return self.inner.__enter__()
        except BaseException:
            remove_path(partial_path(self.path))
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            return self.inner.__exit__(exc_type, exc, tb)
        except BaseException:
            remove_path(partial_path(self.path))
            raise
        finally:
            if exc is not None:
                remove_path(partial_path(self.path))


def open_writer(spec: OutputSpec, stream: bool = True):
    """A writer for ``spec`` (use it as a context manager); ``stream`` applies to TIFF (see the module doc)."""
    if spec.kind == "tiff":
        inner: Any = _TiffWriter(spec, stream)
    elif spec.kind == "hdf5":
        inner = _Hdf5Writer(spec)
    else:
        inner = OmeZarrWriter(spec.path, spec.shape, spec.dtype, spec.axes, name=spec.path.stem, scale=spec.scale,
                              attrs=spec.attrs or None, physical=spec.physical, channel_names=spec.channel_names,
                              ngff=spec.ngff)
    return _NoPartialLeft(inner, spec.path)
