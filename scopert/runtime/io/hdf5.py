"""HDF5 reading and writing for the runtime (h5py), with pytorch-3dunet's dataset names.

pytorch-3dunet keeps inputs in a dataset called ``raw`` (and labels in ``label``) and writes
``predictions``; those are the defaults here. Reads are lazy: ``read_hdf5`` returns the
``h5py.Dataset`` itself, so a large volume is read slab by slab. Writes are atomic (a run's output is
filled region by region through ``outputs.open_writer``).

Imports numpy, h5py, the standard library and scopert only (never torch or onnx).
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from scopert.errors import ConfigError, InputError, OutputError
from scopert.runtime.io.atomic import atomic_path
from scopert.runtime.io.image import ImageData, RUNTIME_AXES, check_fits_in_memory, validate_axes
from scopert.runtime.io.physical import from_hdf5_attrs

log = logging.getLogger(__name__)

COMPRESSIONS = ("gzip", "lzf", None)


def list_datasets(f: h5py.Group) -> list[str]:
    """Full names of every dataset in an open HDF5 file or group, sorted."""
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


class CheckedDataset(h5py.Dataset):
    """An ``h5py.Dataset`` whose reads raise InputError naming the file when its data is damaged.

    HDF5 finds a corrupt chunk, a failed filter or a data address past the end of a truncated file
    only when that part is read, and reports it as OSError or RuntimeError; here it becomes an
    InputError. Loading the whole dataset (``np.asarray``) is refused up front when it cannot fit
    in memory (a damaged header can claim any shape).
    """

    def _damaged(self, exc: Exception) -> InputError:
        where = f"{self.file.filename}:{self.name}" if self.id.valid else "an HDF5 dataset"
        return InputError(
            f"{where} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); the file is truncated or "
            "corrupt: copy it again or re-export it"
        )

    def __getitem__(self, args: Any, new_dtype: Any = None) -> Any:
        try:
            return super().__getitem__(args, new_dtype=new_dtype)
        except (OSError, RuntimeError) as e:
            raise self._damaged(e) from e

    def read_direct(self, dest: Any, source_sel: Any = None, dest_sel: Any = None) -> None:
        try:
            super().read_direct(dest, source_sel, dest_sel)
        except (OSError, RuntimeError) as e:
            raise self._damaged(e) from e

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        nbytes = int(np.prod(self.shape, dtype=np.float64)) * np.dtype(dtype or self.dtype).itemsize
        check_fits_in_memory(nbytes, f"{self.file.filename}:{self.name}")
        return super().__array__(dtype, copy)


def _open_read(path: Path) -> h5py.File:
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file; check the path")
    if not h5py.is_hdf5(path):
        raise InputError(
            f"{path} is not an HDF5 file (or its header is corrupt); give an HDF5 file, "
            "or use the right suffix for its real format"
        )
    try:
        # No file locking: inputs are opened read-only and may live on read-only or network mounts.
        return h5py.File(path, "r", locking=False)
    except (OSError, RuntimeError, ValueError) as e:
        raise InputError(f"{path} cannot be opened as HDF5 ({e}); the file may be truncated or corrupt") from e


_AXES_NAME = b"axes\x00"


def _claimed_vlen_length(ds: h5py.Dataset, path: Path) -> int | None:
    """The length a scalar variable-length ``axes`` attribute claims in the object header, if it can be found.

    HDF5 allocates (and touches) that many bytes before it checks them against the global heap, so one
    flipped byte costs 4 GiB and ~9 s (found by fuzzing). The attribute message is located by its name
    in the dataset's object header: v1 (names padded to 8), v2 and v3 (unpadded; v3 adds an encoding byte).
    """
    if not h5py.h5a.exists(ds.id, b"axes"):
        return None
    attr = h5py.h5a.open(ds.id, b"axes")
    if not attr.get_type().is_variable_str() or attr.get_space().get_simple_extent_type() != h5py.h5s.SCALAR:
        return None
    with open(path, "rb") as f:
        f.seek(h5py.h5o.get_info(ds.id).addr)
        header = f.read(4096)
    at = header.find(_AXES_NAME)
    while at >= 9:
        for start, version, pad in ((at - 8, 1, True), (at - 8, 2, False), (at - 9, 3, False)):
            if header[start] != version:
                continue
            name_size, dt_size, ds_size = struct.unpack_from("<HHH", header, start + 2)
            if name_size != len(_AXES_NAME):
                continue
            sizes = [name_size, dt_size, ds_size]
            data = at + sum(-(-n // 8) * 8 if pad else n for n in sizes)
            if data + 4 <= len(header):
                return struct.unpack_from("<I", header, data)[0]
        at = header.find(_AXES_NAME, at + 1)
    return None


def _axes_attr(ds: h5py.Dataset, path: Path) -> str | None:
    claimed = _claimed_vlen_length(ds, path)
    if claimed is not None and claimed > path.stat().st_size:
        raise InputError(
            f"{path}:{ds.name} has an axes attribute that claims {claimed} bytes in a file of {path.stat().st_size}; "
            "the file is corrupt: copy it again or re-export it (or delete the attribute)"
        )
    raw = ds.attrs.get("axes")
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    axes = str(raw).lower()
    if set(axes) - set(RUNTIME_AXES) or len(set(axes)) != len(axes) or len(axes) != ds.ndim:
        raise InputError(
            f"{path}:{ds.name} has axes attribute {raw!r} that does not fit its {ds.ndim} dimensions "
            "(expected one of t, c, z, y, x per dimension); fix or delete the attribute"
        )
    return axes


def read_hdf5(path: str | os.PathLike[str], dataset: str = "raw", lazy: bool = True) -> ImageData:
    """Open one dataset of an HDF5 file read-only; its ``axes`` attribute, if any, gives the axes.

    With ``lazy`` (default) the array is the open ``h5py.Dataset`` and the file stays open until
    ``ImageData.close()``; otherwise it is loaded and the file closed. A missing dataset raises
    InputError listing the datasets the file does have.
    """
    path = Path(path)
    f = _open_read(path)
    try:
        try:
            obj = _find_dataset(f, dataset, path)
            axes = _axes_attr(obj, path)
            # element_size_um without an axes attribute names z, y, x of a 3D volume (pytorch-3dunet, ilastik)
            physical = from_hdf5_attrs(obj.attrs, axes or ("zyx" if obj.ndim == 3 else "yx" if obj.ndim == 2
                                                           else None)) or None
        except (OSError, RuntimeError, KeyError, IndexError, ValueError, TypeError, struct.error) as e:
            # h5py raises these for damaged object headers, heaps and attributes
            raise InputError(
                f"{path}:{dataset} cannot be opened ({type(e).__name__}: {str(e)[:200]}); the file is truncated "
                "or corrupt: copy it again or re-export it"
            ) from e
        ds = CheckedDataset(obj.id, readonly=True)
        if lazy:
            return ImageData(array=ds, axes=axes, path=path, source_axes=axes, dataset=dataset, physical=physical,
                             channel_names=_channel_names(obj), _closer=f.close)
        array = np.asarray(ds)
        f.close()
        return ImageData(array=array, axes=axes, path=path, source_axes=axes, dataset=dataset, physical=physical,
                         channel_names=_channel_names(obj))
    except BaseException:
        f.close()
        raise


def _channel_names(ds: h5py.Dataset) -> list[str] | None:
    """The ``channel_names`` attribute ScopeRT writes, when it names each channel of the dataset's c axis."""
    raw = ds.attrs.get("channel_names")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw] if raw is not None else None
    axes = ds.attrs.get("axes")
    axes = axes.decode() if isinstance(axes, bytes) else axes
    if names and isinstance(axes, str) and "c" in axes and len(axes) == ds.ndim and \
            ds.shape[axes.index("c")] == len(names):
        return names
    return None


def _find_dataset(f: h5py.File, dataset: str, path: Path) -> h5py.Dataset:
    obj = f.get(dataset)
    if not isinstance(obj, h5py.Dataset):
        found = list_datasets(f)
        what = "is a group, not a dataset" if obj is not None else "is not in the file"
        raise InputError(
            f"dataset {dataset!r} {what} {path}; it has {', '.join(map(repr, found)) or 'no datasets'}: "
            "pass one of them as the dataset name"
        )
    return obj


def _check_compression(compression: str | None) -> None:
    if compression not in COMPRESSIONS:
        raise ConfigError(f"HDF5 compression {compression!r} is unknown; use 'gzip', 'lzf' or None")


def _create(f: h5py.File, dataset: str, shape: tuple[int, ...], dtype: np.dtype, axes: str | None,
            compression: str | None, data: Any = None) -> h5py.Dataset:
    chunks = True if compression else None
    ds = f.create_dataset(dataset, shape=shape, dtype=dtype, data=data, compression=compression, chunks=chunks)
    if axes is not None:
        ds.attrs["axes"] = axes
    return ds


def write_hdf5(
    path: str | os.PathLike[str],
    array: Any,
    dataset: str = "predictions",
    axes: str | None = None,
    compression: str | None = "gzip",
) -> Path:
    """Write ``array`` as one dataset of a new HDF5 file, atomically; ``axes`` becomes an attribute.

    The file is replaced as a whole (other datasets in an existing file at ``path`` are not kept).
    """
    path = Path(path)
    _check_compression(compression)
    data = np.asarray(array)
    if axes is not None:
        axes = validate_axes(axes, data.ndim)
    with atomic_path(path) as tmp:
        try:
            with h5py.File(tmp, "w") as f:
                _create(f, dataset, data.shape, data.dtype, axes, compression, data=data)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"cannot write {path}:{dataset}: {e}") from e
        except OSError as e:
            raise OutputError(f"writing {path} failed: {e}; check free disk space and permissions") from e
    return path
