"""Zarr reading and writing, used only when the optional ``zarr`` package is installed.

A ``.zarr`` path is either one array or a group holding named arrays (like an HDF5 file; the same
default names ``raw`` / ``predictions``). ``zarr`` is imported inside the functions, so the rest of
the I/O layer works without it, and a missing ``zarr`` is an InputError/ConfigError that names the fix.

Imports numpy, the standard library, scopert and (lazily) zarr; never torch or onnx.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from scopert.errors import ConfigError, InputError, ScopertError
from scopert.runtime.io.atomic import atomic_path
from scopert.runtime.io.image import GuardedArray, ImageData, RUNTIME_AXES, validate_axes

log = logging.getLogger(__name__)

_INSTALL_HINT = "install it (pip install 'scopert[dist]' or pip install zarr), or convert the data to TIFF/HDF5"


def _zarr(error: type[Exception]) -> Any:
    try:
        import zarr
    except ImportError as e:
        raise error(f"Zarr support needs the 'zarr' package, which is not installed; {_INSTALL_HINT}") from e
    return zarr


def _array_names(group: Any) -> list[str]:
    names: list[str] = []

    def walk(g: Any, prefix: str) -> None:
        for name, arr in g.arrays():
            names.append(prefix + name)
        for name, sub in g.groups():
            walk(sub, prefix + name + "/")

    walk(group, "")
    return sorted(names)


def read_zarr(path: str | os.PathLike[str], dataset: str = "raw") -> ImageData:
    """Open a Zarr array read-only (lazily); in a group, the array named ``dataset``.

    The ``axes`` attribute, if present and valid, gives the axes; otherwise axes is None. The array
    is a ``GuardedArray``: a store whose metadata or chunks are damaged raises InputError naming the
    store, at open or when the damaged chunk is read, never the codec's own exception.
    """
    zarr = _zarr(InputError)
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr warns about each stray file it meets in a damaged store
            node, name, ome_axes, physical = _open_node(zarr, path, dataset)
            shape, dtype = tuple(int(n) for n in node.shape), np.dtype(node.dtype)
            raw = node.attrs.get("axes", ome_axes)
            headers = BloscHeaderCheck(node, path / name if name else path)
    except ScopertError:
        raise
    except Exception as e:  # zarr raises many types for a folder that is not a (valid) store
        raise InputError(
            f"{path} cannot be opened as Zarr ({type(e).__name__}: {str(e)[:200]}); check that it is an intact "
            "Zarr store (copy or re-export it)"
        ) from e
    axes = None
    if isinstance(raw, str):
        low = raw.lower()
        if not set(low) - set(RUNTIME_AXES) and len(set(low)) == len(low) == len(shape):
            axes = low
        else:
            log.warning("%s: ignoring axes attribute %r that does not fit shape %s", path, raw, shape)
    log.debug("%s: Zarr array %s %s", path, shape, dtype)
    where = f"{path}:{name}" if name else str(path)
    return ImageData(array=GuardedArray(node, where, before_read=headers), axes=axes, path=path,
                     source_axes=raw if isinstance(raw, str) else None, dataset=name, physical=physical)


_CHUNK_KEY = re.compile(r"^(c([./]\d+)*|(c[./])?\d+([./]\d+)*)$")
_BLOSC_HEADER = 16


class BloscHeaderCheck:
    """Refuse Blosc chunks whose header does not match the file, before the codec reads past the buffer.

    numcodecs' Blosc decoder trusts the compressed size in a chunk's 16-byte header and reads that many
    bytes: a damaged header crashes the process (a segfault, found by fuzzing). Each chunk file's header
    must state the file's own length and, without filters, the array's chunk size. Chunks are checked when
    a read first touches them (once each), so opening a store of a million chunks costs nothing.
    """

    def __init__(self, node: Any, folder: Path) -> None:
        compressors = tuple(getattr(node, "compressors", ()) or ())
        self.enabled = (getattr(node, "shards", None) is None and folder.is_dir()
                        and any(type(c).__name__.lower().startswith("blosc") for c in compressors))
        self.node, self.folder = node, folder
        self.shape = tuple(int(n) for n in node.shape)
        self.chunks = tuple(int(c) for c in node.chunks)
        self.filters = tuple(getattr(node, "filters", ()) or ())
        self.chunk_bytes = int(np.prod(self.chunks, dtype=np.int64)) * np.dtype(node.dtype).itemsize
        self.checked: set[tuple[int, ...]] = set()

    def __call__(self, index: Any) -> None:
        if not self.enabled:
            return
        ranges = []
        for sl, n, c in zip(_as_slices(index, len(self.shape)), self.shape, self.chunks):
            start, stop, _ = sl.indices(n)
            if stop <= start:
                return
            ranges.append(range(start // c, (stop - 1) // c + 1))
        for coords in itertools.product(*ranges):
            if coords not in self.checked:
                self._check(coords)
                self.checked.add(coords)

    def _check(self, coords: tuple[int, ...]) -> None:
        key = self.node.metadata.encode_chunk_key(coords)
        file = self.folder / key
        if not file.is_file():
            return  # never written: zarr returns the fill value
        with open(file, "rb") as f:
            header = f.read(_BLOSC_HEADER)
        size = file.stat().st_size
        problem = None
        if len(header) < _BLOSC_HEADER:
            problem = f"{size} bytes, shorter than a Blosc header"
        else:
            nbytes, blocksize, cbytes = struct.unpack("<III", header[4:16])
            if cbytes != size:
                problem = f"its header claims {cbytes} compressed bytes, the file has {size}"
            elif not self.filters and nbytes != self.chunk_bytes:
                problem = f"its header claims {nbytes} bytes of data, a chunk holds {self.chunk_bytes}"
            elif nbytes and not 0 < blocksize <= nbytes:
                problem = f"its header claims a block size of {blocksize} for {nbytes} bytes"
        if problem:
            raise InputError(f"{self.folder}: chunk {key!r} is damaged ({problem}); copy the store again or "
                             "re-export it")


def _as_slices(index: Any, ndim: int) -> list[slice]:
    """A numpy-style index (ints, slices, one Ellipsis) as one slice per axis."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index):
        at = next(k for k, i in enumerate(index) if i is Ellipsis)
        index = index[:at] + (slice(None),) * (ndim - len(index) + 1) + index[at + 1:]
    index = index + (slice(None),) * (ndim - len(index))
    return [slice(int(i), int(i) + 1) if isinstance(i, (int, np.integer)) else
            (i if isinstance(i, slice) else slice(None)) for i in index[:ndim]]


def _open_node(zarr: Any, path: Path, dataset: str) -> tuple[Any, str | None, str | None, Any]:
    """The array at ``path`` (or ``dataset`` inside the group at ``path``), its name in the group, and the axes
    and physical sizes an OME-Zarr image's metadata names (its full-resolution level is read when ``dataset`` is
    not in the group)."""
    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return node, None, None, None
    found = _array_names(node)
    from scopert.runtime.io.omezarr import ome_attrs, read_multiscales_level0

    ome = ome_attrs(node.attrs)
    if dataset not in found and "multiscales" in ome:
        from scopert.runtime.io.physical import from_ngff

        try:
            level0, axes = read_multiscales_level0(node)
        except ValueError as e:
            raise InputError(f"{path} has OME-Zarr metadata that cannot be read ({e}); pass --dataset") from e
        if level0 in found:
            return node[level0], level0, axes, from_ngff(ome["multiscales"][0]) or None
    if dataset not in found:
        raise InputError(
            f"array {dataset!r} is not in {path}; it has {', '.join(map(repr, found)) or 'no arrays'}: "
            "pass one of them as the dataset name"
        )
    return node[dataset], dataset, None, None


def write_zarr(path: str | os.PathLike[str], array: Any, dataset: str = "predictions", axes: str | None = None) -> Path:
    """Write ``array`` as the array ``dataset`` of a new Zarr group at ``path``, atomically."""
    zarr = _zarr(ConfigError)
    path = Path(path)
    data = np.asarray(array)
    if axes is not None:
        axes = validate_axes(axes, data.ndim)
    with atomic_path(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        create = getattr(group, "create_array", None) or group.create_dataset  # zarr 3 / zarr 2
        arr = create(dataset, shape=data.shape, dtype=data.dtype)
        arr[...] = data
        if axes is not None:
            arr.attrs["axes"] = axes
    return path
