"""What every reader returns (``ImageData``), the axes vocabulary, and the up-front input check.

The runtime speaks five axis letters: ``t`` (time), ``c`` (channel), ``z``, ``y``, ``x``. Readers map
their formats' letters onto these here, so that every format gets the same mapping. ``check_array``
rejects data that a model cannot use, before any tile is run. It reads in slabs along axis 0, so
a memory-mapped or HDF5-backed input is never loaded whole.

Imports numpy, the standard library and ``scopert.errors`` only (never torch, onnx or h5py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scopert.errors import ConfigError, InputError
from scopert.runtime.io.physical import PhysicalSizes

log = logging.getLogger(__name__)

RUNTIME_AXES = "tczyx"
"""The axis letters the runtime uses, in ImageJ's hyperstack order (T, Z, C, Y, X) reordered by name."""

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ZARR_SUFFIXES = (".zarr",)
SUPPORTED_SUFFIXES = TIFF_SUFFIXES + HDF5_SUFFIXES + ZARR_SUFFIXES

# tifffile's letters that mean the same as one of ours. 'S' (samples, e.g. RGB) and 'E' (lambda)
# are channels. Anything else ('Q' unknown, 'I' image sequence, 'R' tile, 'M' mosaic ...) is an
# axis whose meaning the file does not state; it gets a guessed letter.
_KNOWN_LETTERS = {"T": "t", "Z": "z", "C": "c", "Y": "y", "X": "x", "S": "c", "E": "c"}
# The order in which unstated axes get letters, innermost first: a lone unknown axis in front of
# YX is taken as z (a stack), a second one as t, a third as c.
_GUESS_ORDER = ("z", "t", "c")

# Axis-0 slabs of about this many bytes when scanning for NaN/Inf.
_CHECK_SLAB_BYTES = 64 * 2**20


@dataclass
class ImageData:
    """An image as read from a file, with its axes in the runtime's letters.

    ``array`` is an ``np.ndarray``, a read-only ``np.memmap`` (uncompressed TIFF), or a lazy
    ``h5py.Dataset`` (slice it; ``np.asarray`` loads it). A memmap keeps the file's byte order
    (ImageJ writes big-endian); numpy handles it, and ``astype`` converts. Lazy arrays keep their file open until
    ``close()`` is called or the ``with`` block ends. ``axes`` is None when the file does not say
    (HDF5 without an ``axes`` attribute). ``source_axes`` is what the file stated before mapping,
    so a caller can tell a guessed 'z' (from tifffile's 'Q') from a stated one.
    """

    array: Any
    axes: str | None
    path: Path
    source_axes: str | None = None
    channel_names: list[str] | None = None
    dataset: str | None = None
    physical: PhysicalSizes | None = None  # what one step along each axis measures, as the file says
    _closer: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        """The value type in native byte order (a memmap of an ImageJ file is big-endian: '>u2' -> uint16)."""
        return np.dtype(self.array.dtype).newbyteorder("=")

    @property
    def ndim(self) -> int:
        return len(self.array.shape)

    @property
    def axes_guessed(self) -> bool:
        """True when at least one axis letter was guessed rather than stated by the file."""
        if self.axes is None or self.source_axes is None:
            return False
        return any(s.upper() not in _KNOWN_LETTERS for s in self.source_axes)

    def close(self) -> None:
        """Release the file behind a lazy array; the array must not be used afterwards."""
        closer, self._closer = self._closer, None
        if closer is not None:
            closer()

    def __enter__(self) -> ImageData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def normalize_axes(source_axes: str, path: str | Path | None = None) -> str:
    """Map a file's axis letters (tifffile style, any case) onto t, c, z, y, x.

    Known letters map directly ('S' samples and 'E' lambda become 'c'). Unstated axes ('Q', 'I',
    ...) take the first unused of z, t, c, innermost first, so ImageJ-less stacks read as 'zyx'.
    Two axes that both mean the same letter (channels and RGB samples) cannot be expressed and
    raise InputError.
    """
    where = f" in {path}" if path is not None else ""
    letters: list[str | None] = [_KNOWN_LETTERS.get(a.upper()) for a in source_axes]
    known = [a for a in letters if a is not None]
    if len(set(known)) != len(known):
        raise InputError(
            f"axes {source_axes!r}{where} have two axes that both mean "
            f"{sorted({a for a in known if known.count(a) > 1})} (e.g. channels and RGB samples); "
            "save the image with one channel axis (e.g. split or merge the RGB channels in Fiji)"
        )
    free = [g for g in _GUESS_ORDER if g not in known]
    for i in reversed(range(len(letters))):
        if letters[i] is None:
            if not free:
                raise InputError(
                    f"axes {source_axes!r}{where} have more axes than t, c, z, y, x can name; "
                    "save the image with at most five axes (t, c, z, y, x)"
                )
            letters[i] = free.pop(0)
    out = "".join(a for a in letters if a is not None)
    if out != source_axes.lower():
        log.debug("axes %r%s read as %r", source_axes, where, out)
    return out


def validate_axes(axes: str, ndim: int, *, what: str = "axes") -> str:
    """Return ``axes`` lower-cased after checking it names ``ndim`` distinct runtime axes incl. y and x."""
    if not isinstance(axes, str):
        raise ConfigError(f"{what} must be a string such as 'zyx', got {axes!r}")
    low = axes.lower()
    bad = sorted(set(low) - set(RUNTIME_AXES))
    if bad:
        raise ConfigError(f"{what} {axes!r} has unknown letters {bad}; use only t, c, z, y, x (e.g. 'zyx', 'czyx')")
    if len(set(low)) != len(low):
        raise ConfigError(f"{what} {axes!r} repeats a letter; name each axis once (e.g. 'tczyx')")
    if len(low) != ndim:
        raise ConfigError(
            f"{what} {axes!r} names {len(low)} axes but the array has {ndim} dimensions; "
            "give one letter per dimension"
        )
    if "y" not in low or "x" not in low:
        raise ConfigError(f"{what} {axes!r} must contain 'y' and 'x' (an image has two spatial axes at least)")
    return low


def image_kind(path: str | Path) -> str:
    """'tiff', 'hdf5' or 'zarr' from the file name; InputError listing the supported suffixes otherwise.

    '.ome.tif' counts as TIFF. The suffix is matched case-insensitively ('.TIF' is common).
    """
    name = Path(path).name.lower()
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(HDF5_SUFFIXES):
        return "hdf5"
    if name.endswith(ZARR_SUFFIXES):
        return "zarr"
    raise InputError(
        f"{path}: unknown image file type; supported suffixes are {', '.join(SUPPORTED_SUFFIXES)} "
        "(and .ome.tif); convert the file or rename it if the suffix is wrong"
    )


def available_memory() -> int | None:
    """Bytes of memory the OS could give this process now (MemAvailable on Linux), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Raise InputError before allocating ``nbytes`` for ``what`` when the machine cannot hold them.

    A damaged header can claim 10**12 pixels; refusing here names the file instead of a MemoryError
    (or an out-of-memory kill) part way through a run.
    """
    free = available_memory()
    if free is not None and nbytes > free:
        raise InputError(
            f"{what} needs {nbytes / 2**30:.1f} GiB in memory but only {free / 2**30:.1f} GiB are available; "
            "if the file is intact, convert it to an uncompressed TIFF or HDF5 (read slab by slab), "
            "otherwise its header is corrupt: copy or re-export the file"
        )


class GuardedArray:
    """A lazy array (e.g. Zarr) whose reads raise InputError naming the file when its data is damaged.

    Slicing and ``np.asarray`` behave as on the wrapped array; any exception its library raises while
    decoding (codec errors, wrong chunk sizes, broken metadata found late) becomes an InputError, and
    loading the whole array is refused up front when it cannot fit in memory. Other attributes pass through.
    """

    def __init__(self, array: Any, where: str, before_read: Callable[[Any], None] | None = None) -> None:
        self._array = array
        self._where = where
        self._before_read = before_read  # e.g. a check of the chunks a read will decode

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self._array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._array, name)

    def _damaged(self, exc: Exception) -> InputError:
        return InputError(
            f"{self._where} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); the data is damaged or "
            "incomplete: copy or re-export it"
        )

    def __getitem__(self, index: Any) -> np.ndarray:
        if self._before_read is not None:
            self._before_read(index)
        try:
            return np.asarray(self._array[index])
        except Exception as exc:  # noqa: BLE001 - the library's decoders raise any type on damaged data
            raise self._damaged(exc) from exc

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        check_fits_in_memory(int(np.prod(self.shape, dtype=np.float64)) * self.dtype.itemsize, self._where)
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)


def _slab_rows(shape: tuple[int, ...], itemsize: int) -> int:
    """Rows along axis 0 per slab so that one slab is about _CHECK_SLAB_BYTES."""
    row_bytes = itemsize * int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else itemsize
    return max(1, _CHECK_SLAB_BYTES // max(1, row_bytes))


def check_array(array: Any, name: str = "input") -> None:
    """Raise InputError if ``array`` cannot be fed to a model; return None if it can.

    Rejects: fewer than 2 dimensions, a dimension of size 0, dtypes that are not real numbers
    (complex, bool, object, strings, datetimes, structured), and NaN or Inf values (the message
    gives how many and the index of the first). Works on ndarrays, memmaps and h5py datasets:
    values are scanned in slabs along axis 0, so a file-backed array is never loaded whole.
    """
    shape = tuple(int(n) for n in array.shape)
    dtype = np.dtype(array.dtype)
    if len(shape) < 2:
        raise InputError(
            f"{name} has shape {shape}: an image needs at least two dimensions (y, x); "
            "check that the right file or dataset was given"
        )
    if 0 in shape:
        raise InputError(
            f"{name} is empty: shape {shape} has a dimension of size 0; "
            "check the file (an aborted acquisition or a wrong dataset name)"
        )
    if dtype.kind not in "iuf":
        kinds = {"c": "complex", "b": "boolean", "O": "object", "U": "string", "S": "bytes",
                 "V": "structured/void", "M": "datetime", "m": "timedelta"}
        raise InputError(
            f"{name} has dtype {dtype} ({kinds.get(dtype.kind, 'unsupported')}); models take real "
            "numbers: convert it to an integer or float type (for complex data, e.g. its magnitude)"
        )
    if dtype.kind != "f":
        return
    rows = _slab_rows(shape, dtype.itemsize)
    n_nan = n_inf = 0
    first: tuple[int, ...] | None = None
    for start in range(0, shape[0], rows):
        slab = np.asarray(array[start:start + rows])
        bad = ~np.isfinite(slab)
        if not bad.any():
            continue
        nan = int(np.isnan(slab).sum())
        n_nan += nan
        n_inf += int(bad.sum()) - nan
        if first is None:
            idx = np.unravel_index(int(np.argmax(bad)), bad.shape)
            first = (start + int(idx[0]),) + tuple(int(i) for i in idx[1:])
    if first is not None:
        parts = [f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "Inf")) if n]
        raise InputError(
            f"{name} contains {' and '.join(parts)} values (first at index {first}); "
            "models cannot restore undefined pixels: replace them (e.g. numpy.nan_to_num) "
            "or re-export the acquisition"
        )
