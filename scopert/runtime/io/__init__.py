"""The runtime's image I/O: read and write TIFF, HDF5 (and Zarr when installed) by file suffix.

``read_image`` / ``write_image`` dispatch on the suffix; ``check_array`` rejects unusable input
up front; ``list_images`` / ``plan_batch`` serve folder batch mode. Writes are atomic, and
inputs are opened read-only and never modified.

Imports numpy, tifffile, h5py and the standard library (zarr only when asked for); never torch
or onnx.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scopert.errors import ConfigError
from scopert.runtime.io.atomic import atomic_path, check_output_path
from scopert.runtime.io.folder import list_images, output_path_for, plan_batch
from scopert.runtime.io.hdf5 import read_hdf5, write_hdf5
from scopert.runtime.io.image import (
    SUPPORTED_SUFFIXES,
    ImageData,
    check_array,
    image_kind,
    normalize_axes,
    validate_axes,
)
from scopert.runtime.io.tiff import (
    TiffSlabReader,
    TiffStreamWriter,
    read_slab,
    read_tiff,
    to_bit_depth,
    write_tiff,
)
from scopert.runtime.io.zarrstore import read_zarr, write_zarr

__all__ = [
    "SUPPORTED_SUFFIXES", "ImageData", "TiffSlabReader", "TiffStreamWriter",
    "atomic_path", "check_array", "check_output_path", "image_kind", "list_images", "normalize_axes",
    "output_path_for", "plan_batch", "read_hdf5", "read_image", "read_slab", "read_tiff", "read_zarr",
    "to_bit_depth", "validate_axes", "write_hdf5", "write_image", "write_tiff", "write_zarr",
]


def _is_ome_name(path: Path) -> bool:
    return path.name.lower().endswith((".ome.tif", ".ome.tiff"))


def read_image(path: str | os.PathLike[str], dataset: str | None = None) -> ImageData:
    """Read an image by its suffix (.tif/.tiff/.ome.tif, .h5/.hdf5/.hdf, .zarr).

    ``dataset`` names the array inside HDF5/Zarr (default 'raw', pytorch-3dunet's name); it must
    not be given for TIFF. Lazy arrays keep their file open: use ``with read_image(p) as im``.
    """
    path = Path(path)
    kind = image_kind(path)
    if kind == "tiff":
        if dataset is not None:
            raise ConfigError(f"a dataset name ({dataset!r}) was given but {path} is a TIFF; drop the dataset option")
        return read_tiff(path)
    if kind == "hdf5":
        return read_hdf5(path, dataset or "raw")
    return read_zarr(path, dataset or "raw")


def write_image(
    path: str | os.PathLike[str],
    array: Any,
    axes: str,
    fmt: str | None = None,
    bits: int | None = None,
    dataset: str | None = None,
    channel_names: list[str] | None = None,
) -> Path:
    """Write an image atomically, choosing the format by suffix.

    TIFF: ``fmt`` 'imagej' or 'ome' (default: 'ome' for a '.ome.tif' name, else 'imagej').
    HDF5/Zarr: ``dataset`` (default 'predictions'), ``axes`` stored as an attribute. ``bits``
    (8, 16, 32) applies 3D-RCAN's bit-depth conversion for every format.
    """
    path = Path(path)
    kind = image_kind(path)
    if kind == "tiff":
        if dataset is not None:
            raise ConfigError(f"a dataset name ({dataset!r}) was given but {path} is a TIFF; drop the dataset option")
        fmt = fmt or ("ome" if _is_ome_name(path) else "imagej")
        return write_tiff(path, array, axes, fmt=fmt, channel_names=channel_names, bits=bits)
    if fmt is not None:
        raise ConfigError(f"fmt={fmt!r} applies to TIFF only, but {path} is {kind.upper()}; drop the format option")
    data = to_bit_depth(array, bits)
    if kind == "hdf5":
        return write_hdf5(path, data, dataset or "predictions", axes=axes)
    return write_zarr(path, data, dataset or "predictions", axes=axes)
