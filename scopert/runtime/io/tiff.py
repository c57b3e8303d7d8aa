"""TIFF reading and writing for the runtime: ImageJ hyperstacks, OME-TIFF, memmaps, slabs, streams.

- ``read_tiff`` returns the first series with its axes in t, c, z, y, x letters. Uncompressed
  contiguous data comes back as a read-only ``np.memmap``, so a large file is not loaded.
- ``TiffSlabReader`` / ``read_slab`` read a range along axis 0 with memory bounded by the range.
- ``write_tiff`` writes atomically (ImageJ hyperstack or OME-TIFF), with the 3D-RCAN bit-depth rule.
- ``TiffStreamWriter`` writes a series slab by slab (bounded memory), atomically.

Truncated and corrupt files are detected up front: tifffile only logs many structural errors
(a file cut in half reads as its first page), so they are captured and turned into InputError,
and every data segment must end inside the file.

Imports numpy, tifffile, the standard library and scopert only (never torch or onnx).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from scopert.errors import ConfigError, InputError, OutputError, RunError, ScopertError
from scopert.runtime.io.atomic import atomic_path, finish_atomic
from scopert.runtime.io.image import ImageData, check_fits_in_memory, normalize_axes, validate_axes
from scopert.runtime.io.physical import PhysicalSizes, from_imagej, from_ome_pixels, to_imagej, to_ome_metadata

log = logging.getLogger(__name__)

TIFF_FORMATS = ("imagej", "ome")
_IMAGEJ_ORDER = "tzcyx"  # ImageJ hyperstacks are stored T, Z, C, Y, X (slowest first)
_IMAGEJ_DTYPES = {np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32)}
_BIT_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.float32}
# tifffile switches to BigTIFF above this size for uncompressed data; do the same for compressed OME.
_BIGTIFF_BYTES = 2**32 - 2**25


# ----------------------------------------------------------------------------------------- reading


class _ErrorCapture(logging.Filter):
    """Take tifffile's ERROR records from the current thread (other threads' records are theirs).

    A filter on tifffile's logger, not a handler: the records it takes are not printed as well, so a damaged file
    is reported once, by ScopeRT's own line that names the fix."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread == self.thread and record.levelno >= logging.ERROR:
            self.messages.append(record.getMessage())
            return False
        return True


@contextmanager
def _capture_tifffile_errors() -> Iterator[list[str]]:
    capture = _ErrorCapture()
    tl = logging.getLogger("tifffile")
    tl.addFilter(capture)
    try:
        yield capture.messages
    finally:
        tl.removeFilter(capture)


def _corrupt(path: Path, detail: str) -> InputError:
    return InputError(
        f"{path} is truncated or corrupt ({detail}); copy the file again or re-export it "
        "from the acquisition software"
    )


def _data_end(series: Any) -> int:
    """One past the last byte of image data that ``series`` claims to have in the file."""
    if series.dataoffset is not None:
        return int(series.dataoffset) + int(series.nbytes)
    end = 0
    for page in series.pages:
        if page is None:
            raise ValueError("a page of the series is missing")
        for off, count in zip(page.dataoffsets, page.databytecounts):
            if count:
                end = max(end, int(off) + int(count))
    return end


def _open_tiff(path: str | os.PathLike[str]) -> tuple[tifffile.TiffFile, Any]:
    """Open ``path`` read-only and return (TiffFile, first series); InputError when unusable.

    The caller closes the TiffFile.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file; check the path")
    tif = None
    try:
        with _capture_tifffile_errors() as errors:
            tif = tifffile.TiffFile(path, mode="rb")
            len(tif.pages)  # walks the IFD chain: a cut file has a broken chain even if its pixels survive
            if not tif.series:
                raise _corrupt(path, "it contains no images")
            series = tif.series[0]
            end = _data_end(series)
        if errors:
            raise _corrupt(path, f"tifffile: {errors[0]}")
        size = tif.filehandle.size
        if end > size:
            raise _corrupt(path, f"its images need {end} bytes but the file has only {size}")
    except ScopertError:
        if tif is not None:
            tif.close()
        raise
    except tifffile.TiffFileError as e:
        if tif is not None:
            tif.close()
        if "not a TIFF file" in str(e):
            raise InputError(
                f"{path} is not a TIFF file ({e}); give a TIFF, or use the right suffix for its real format"
            ) from e
        raise _corrupt(path, str(e)) from e
    except Exception as e:  # noqa: BLE001 - tifffile's parser raises any type on a damaged file
        # (struct.error, RuntimeError 'incompatible keyframe', TypeError, ZeroDivisionError, AssertionError ...)
        if tif is not None:
            tif.close()
        raise _corrupt(path, f"{type(e).__name__}: {str(e)[:200]}") from e
    if len(tif.series) > 1:
        log.info("%s holds %d image series; reading the first, %s", path, len(tif.series), series.shape)
    return tif, series


def _imagej_channel_names(tif: tifffile.TiffFile) -> list[str] | None:
    """An ImageJ hyperstack's plane labels, one per channel (C is the fastest of T, Z, C), when they agree."""
    meta = tif.imagej_metadata or {}
    labels, n = meta.get("Labels"), int(meta.get("channels", 1) or 1)
    if not isinstance(labels, list) or n < 2 or len(labels) % n:
        return None
    names = [str(x) for x in labels[:n]]
    return names if all(labels[i] == names[i % n] for i in range(len(labels))) else None


def _ome_pixels(tif: tifffile.TiffFile) -> dict[str, Any] | None:
    """The first image's ``Pixels`` element of an OME-TIFF (None for other TIFFs or damaged OME-XML)."""
    if not tif.is_ome or not tif.ome_metadata:
        return None
    try:
        image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        image = image[0] if isinstance(image, list) else image
        return dict(image["Pixels"])
    except Exception:  # noqa: BLE001 - damaged OME-XML; names and sizes are optional, the pixels still read
        return None


def _channel_names(tif: tifffile.TiffFile, pixels: dict[str, Any] | None) -> list[str] | None:
    """Channel names from the OME ``Pixels`` element, or an ImageJ hyperstack's plane labels."""
    if tif.is_imagej and not tif.is_ome:
        return _imagej_channel_names(tif)
    channels = (pixels or {}).get("Channel")
    if channels is None:
        return None
    channels = channels if isinstance(channels, list) else [channels]
    names = [c.get("Name") if isinstance(c, dict) else None for c in channels]
    return [str(n) for n in names] if all(n is not None for n in names) else None


def _physical_sizes(tif: tifffile.TiffFile, pixels: dict[str, Any] | None, series: Any, axes: str,
                    path: Path) -> PhysicalSizes | None:
    """What the file says one pixel, one z step and one frame measure: OME-XML, ImageJ, or a plain TIFF's
    resolution tags when their unit is centimetres (an inch unit is print resolution, not a pixel size)."""
    try:
        if pixels is not None:
            physical = from_ome_pixels(pixels)
        else:
            tags = series.keyframe.tags
            res = tuple(tags[k].value for k in ("XResolution", "YResolution") if k in tags)
            shaped = (tif.shaped_metadata or [{}])[0] if tif.is_shaped else {}
            if isinstance(shaped.get("physical_sizes"), dict):  # written by ScopeRT (scopert stream)
                physical = PhysicalSizes(**{k: dict(v) for k, v in shaped["physical_sizes"].items()})
            elif tif.is_imagej:
                physical = from_imagej(tif.imagej_metadata, res, axes)
            elif "ResolutionUnit" in tags and int(tags["ResolutionUnit"].value) == 3 and len(res) == 2:
                physical = from_imagej({"unit": "cm"}, res, "yx")
                physical = PhysicalSizes({a: physical.get(a, "micrometer") for a in physical.sizes},
                                         {a: "micrometer" for a in physical.sizes})
            else:
                physical = PhysicalSizes()
    except Exception as e:  # noqa: BLE001 - damaged metadata: the pixels still read, the sizes are unknown
        log.warning("%s: its physical sizes cannot be read (%s); the output will have none", path, e)
        return None
    if physical:
        log.debug("%s: physical sizes %s", path, physical.describe())
    return physical or None


def _is_mappable(series: Any) -> bool:
    """Uncompressed, contiguous, no predictor/fill-order decoding: the bytes are the array."""
    return series.dataoffset is not None and bool(series.keyframe.is_final) and series.nbytes > 0


def read_tiff(path: str | os.PathLike[str], memmap: bool = True) -> ImageData:
    """Read the first image series of a TIFF (plain, ImageJ or OME) with normalized axes.

    With ``memmap`` (default) an uncompressed contiguous series is returned as a read-only
    ``np.memmap``, so only the parts that are used are read from disk. Compressed data is
    decoded into memory. Truncated, corrupt or non-TIFF files raise InputError naming the file.
    """
    path = Path(path)
    tif, series = _open_tiff(path)
    try:
        source_axes = str(series.axes)
        axes = normalize_axes(source_axes, path)
        pixels = _ome_pixels(tif)
        names = _channel_names(tif, pixels)
        physical = _physical_sizes(tif, pixels, series, axes, path)
        try:
            if memmap and _is_mappable(series):  # _open_tiff checked that the data lies inside the file
                dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
                array: Any = np.memmap(path, dtype=dtype, mode="r", offset=int(series.dataoffset),
                                       shape=tuple(series.shape))
            else:
                check_fits_in_memory(int(series.nbytes), f"decoding {path}")
                array = series.asarray()
        except ScopertError:
            raise
        except Exception as e:  # noqa: BLE001 - decoders raise zlib.error, ValueError, ... on damaged data
            raise _corrupt(path, f"{type(e).__name__}: {str(e)[:200]}") from e
    finally:
        tif.close()
    return ImageData(array=array, axes=axes, path=path, source_axes=source_axes, channel_names=names,
                     physical=physical)


class TiffSlabReader:
    """Read ranges along axis 0 of a TIFF's first series without loading the rest.

    Uncompressed contiguous data is read straight from the file into the result (memory = the
    slab). Compressed data is decoded page by page, only the pages of the slab, when the pages
    tile axis 0; otherwise (e.g. a single compressed 2D page) the series is decoded once and cached.
    Use as a context manager, or call ``close()``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._tif, self._series = _open_tiff(self.path)
        self._cache: np.ndarray | None = None
        try:
            self.source_axes = str(self._series.axes)
            self.axes = normalize_axes(self.source_axes, self.path)
            pixels = _ome_pixels(self._tif)
            self.channel_names = _channel_names(self._tif, pixels)
            self.physical = _physical_sizes(self._tif, pixels, self._series, self.axes, self.path)
            self._plan_reads()
        except ScopertError:
            self._tif.close()
            raise
        except Exception as e:  # noqa: BLE001 - page metadata of a damaged file
            self._tif.close()
            raise _corrupt(self.path, f"{type(e).__name__}: {str(e)[:200]}") from e
        except BaseException:
            self._tif.close()
            raise

    def _plan_reads(self) -> None:
        """How ``read`` gets rows: straight from the file, page by page, or by decoding the series once."""
        self.shape: tuple[int, ...] = tuple(int(n) for n in self._series.shape)
        self.dtype = np.dtype(self._series.dtype)
        self._file_dtype = self.dtype.newbyteorder(self._tif.byteorder)
        self._mappable = _is_mappable(self._series)
        npages = len(self._series.pages)
        page_size = int(np.prod(self._series.keyframe.shape, dtype=np.int64))
        row_size = int(np.prod(self.shape[1:], dtype=np.int64))
        # pages tile axis 0 when each axis-0 index holds a whole number of pages, in order
        self._pages_per_row = row_size // page_size if page_size and row_size % page_size == 0 else 0
        if self._pages_per_row and self._pages_per_row * self.shape[0] != npages:
            self._pages_per_row = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __enter__(self) -> TiffSlabReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._cache = None
        self._tif.close()

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` along axis 0 as a new in-memory array (clipped to the series)."""
        start, stop, _ = slice(start, stop).indices(self.shape[0])
        stop = max(start, stop)
        out_shape = (stop - start,) + self.shape[1:]
        try:
            if self._mappable:
                row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
                out = np.empty(out_shape, dtype=self._file_dtype)
                fh = self._tif.filehandle
                fh.seek(int(self._series.dataoffset) + start * row_bytes)
                nread = fh.readinto(memoryview(out).cast("B")) if out.nbytes else 0
                if nread != out.nbytes:
                    raise _corrupt(self.path, f"expected {out.nbytes} bytes at row {start}, got {nread}")
                return out.astype(self.dtype, copy=False)
            if self._pages_per_row:
                ppr = self._pages_per_row
                if stop == start:
                    return np.empty(out_shape, dtype=self.dtype)
                data = self._tif.asarray(key=range(start * ppr, stop * ppr), series=0)
                return np.asarray(data).reshape(out_shape)
            if self._cache is None:
                log.info("%s: pages do not tile axis 0; decoding the whole series once", self.path)
                check_fits_in_memory(int(self._series.nbytes), f"decoding {self.path}")
                self._cache = self._series.asarray()
            return np.array(self._cache[start:stop])
        except ScopertError:
            raise
        except Exception as e:
            raise _corrupt(self.path, f"{type(e).__name__}: {e}") from e


def read_slab(path: str | os.PathLike[str], start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` along axis 0 of a TIFF's first series, reading only those rows."""
    with TiffSlabReader(path) as reader:
        return reader.read(start, stop)


# ----------------------------------------------------------------------------------------- writing


def to_bit_depth(array: Any, bits: int | None) -> np.ndarray:
    """Convert a restored image in [0, 1] to 8-, 16- or 32-bit output as 3D-RCAN's apply.py does.

    8: ``clip(255*r, 0, 255)`` as uint8; 16: ``clip(65535*r, 0, 65535)`` as uint16, truncated, not
    rounded; 32: float32 unchanged (no clipping). None returns the array unchanged. Integer input
    is scaled as floats (it is assumed to hold [0, 1] values too).
    """
    if bits is None:
        return np.asarray(array)
    if bits not in _BIT_DTYPES:
        raise ConfigError(f"bit depth {bits!r} is not supported; use 8, 16 or 32")
    r = np.asarray(array)
    if bits == 32:
        return r.astype(np.float32, copy=False)
    if r.dtype.kind != "f":
        r = r.astype(np.float64)
    top = 255 if bits == 8 else 65535
    return np.clip(top * r, 0, top).astype(_BIT_DTYPES[bits])


def _check_fmt(fmt: str) -> str:
    if fmt not in TIFF_FORMATS:
        raise ConfigError(f"TIFF format {fmt!r} is unknown; use one of {', '.join(TIFF_FORMATS)}")
    return fmt


def _file_order(axes: str, fmt: str) -> str:
    """The axes order in the file: ImageJ's T, Z, C, Y, X; OME keeps the order with y, x last."""
    if fmt == "imagej":
        return "".join(a for a in _IMAGEJ_ORDER if a in axes)
    return "".join(a for a in axes if a not in "yx") + "yx"


def _check_dtype(dtype: np.dtype, fmt: str) -> None:
    if dtype.kind not in "iuf":
        raise ConfigError(f"cannot write dtype {dtype} to TIFF; convert to an integer or float type first")
    if fmt == "imagej" and dtype not in _IMAGEJ_DTYPES:
        raise ConfigError(
            f"ImageJ TIFF cannot store {dtype}; pass bits=8, 16 or 32 to convert, or use fmt='ome'"
        )


def _tiff_kwargs(fmt: str, file_axes: str, channel_names: list[str] | None, n_channels: int | None,
                 nbytes: int, compression: str | None, physical: PhysicalSizes | None = None,
                 file_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"axes": file_axes.upper()}
    kw: dict[str, Any] = {"metadata": metadata, "photometric": "minisblack", "compression": compression}
    if channel_names is not None:
        if n_channels is None or len(channel_names) != n_channels:
            raise ConfigError(
                f"{len(channel_names)} channel names given but the image has "
                f"{'no c axis' if n_channels is None else f'{n_channels} channels'}; give one name per channel"
            )
        if fmt == "ome":
            metadata["Channel"] = {"Name": [str(n) for n in channel_names]}
        elif file_shape is not None:  # ImageJ names planes: each plane gets its channel's name (Fiji shows it)
            planes = [i for i, a in enumerate(file_axes) if a not in "yx"]
            grid = np.indices([file_shape[i] for i in planes]).reshape(len(planes), -1)
            c_row = [i for i in planes].index(file_axes.index("c"))
            metadata["Labels"] = [str(channel_names[int(c)]) for c in grid[c_row]]
    if fmt == "imagej":
        kw["imagej"] = True
        resolution, extra = to_imagej(physical, file_axes)
        metadata.update(extra)
        if resolution is not None:
            kw["resolution"] = resolution
    else:
        metadata.update(to_ome_metadata(physical, file_axes))
        kw["ome"] = True
        kw["bigtiff"] = nbytes > _BIGTIFF_BYTES
    return kw


def write_tiff(
    path: str | os.PathLike[str],
    array: Any,
    axes: str,
    fmt: str = "imagej",
    channel_names: list[str] | None = None,
    bits: int | None = None,
    compression: str | None = None,
    physical: PhysicalSizes | None = None,
) -> Path:
    """Write ``array`` (axes in t, c, z, y, x letters) as an ImageJ hyperstack or OME-TIFF, atomically.

    ImageJ requires T, Z, C, Y, X order, so the array is transposed to it; OME keeps the given order
    (with y, x moved last) and stores ``channel_names``. ``bits`` applies ``to_bit_depth`` first.
    ``compression`` is passed to tifffile (e.g. 'zlib'); None writes uncompressed, memory-mappable files.
    Returns the path written.
    """
    path = Path(path)
    fmt = _check_fmt(fmt)
    data = to_bit_depth(array, bits)
    axes = validate_axes(axes, data.ndim)
    _check_dtype(data.dtype, fmt)
    order = _file_order(axes, fmt)
    data = np.transpose(data, [axes.index(a) for a in order])
    n_channels = data.shape[order.index("c")] if "c" in order else None
    kw = _tiff_kwargs(fmt, order, channel_names, n_channels, data.nbytes, compression, physical, data.shape)
    with atomic_path(path) as tmp:
        try:
            tifffile.imwrite(tmp, data, **kw)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"cannot write {path} as {fmt} TIFF: {e}") from e
        except OSError as e:
            raise OutputError(f"writing {path} failed: {e}; check free disk space and permissions") from e
    return path


_DONE = object()
_ABORT = object()


class _Aborted(Exception):
    """Raised inside the writer thread's page iterator when the caller's block failed."""


class TiffStreamWriter:
    """Write one TIFF series of a known ``shape`` slab by slab along axis 0, atomically.

    ``with TiffStreamWriter(out, shape, dtype, 'zyx') as w: for slab in slabs: w.write(slab)``.
    Slabs arrive in order and together must fill axis 0 exactly. tifffile writes the series in
    one call from a background thread that pulls pages from a small queue, so the file is ONE
    series with complete ImageJ/OME metadata, and memory stays at a few slabs. If the block raises,
    or the slabs do not add up to ``shape[0]``, nothing is left at ``path``.

    ``bits`` converts each slab with ``to_bit_depth`` (then ``dtype`` is the converted type). For
    ImageJ, axis 0 must be the slowest axis in T, Z, C order (e.g. 'zcyx', not 'czyx').
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: tuple[int, ...],
        dtype: Any,
        axes: str,
        fmt: str = "imagej",
        channel_names: list[str] | None = None,
        bits: int | None = None,
        compression: str | None = None,
        queue_slabs: int = 2,
        physical: PhysicalSizes | None = None,
    ) -> None:
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.fmt = _check_fmt(fmt)
        self.bits = bits
        self.dtype = np.dtype(_BIT_DTYPES[bits]) if bits in _BIT_DTYPES else np.dtype(dtype)
        if bits is not None and bits not in _BIT_DTYPES:
            raise ConfigError(f"bit depth {bits!r} is not supported; use 8, 16 or 32")
        self.axes = validate_axes(axes, len(self.shape))
        _check_dtype(self.dtype, self.fmt)
        if 0 in self.shape:
            raise ConfigError(f"cannot stream an empty image of shape {self.shape}")
        self._order = _file_order(self.axes, self.fmt)
        if self._order[0] != self.axes[0]:
            raise ConfigError(
                f"cannot stream axes {axes!r} as {self.fmt} TIFF: the file stores {self._order!r}, so axis "
                f"{axes[0]!r} is not the slowest; stream along {self._order[0]!r} or use fmt='ome'"
            )
        self._perm = [self.axes.index(a) for a in self._order]
        self._file_shape = tuple(self.shape[p] for p in self._perm)
        n_channels = self._file_shape[self._order.index("c")] if "c" in self._order else None
        nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._kw = _tiff_kwargs(self.fmt, self._order, channel_names, n_channels, nbytes, compression, physical,
                                self._file_shape)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_slabs))
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._atomic: Any = None
        self.rows_written = 0

    # the writer thread -----------------------------------------------------------------
    def _pages(self) -> Iterator[np.ndarray]:
        page_shape = self._file_shape[-2:]
        while True:
            item = self._queue.get()
            if item is _ABORT:
                raise _Aborted()
            if item is _DONE:
                return
            yield from item.reshape((-1,) + page_shape)

    def _run(self, tmp: Path) -> None:
        try:
            tifffile.imwrite(tmp, self._pages(), shape=self._file_shape, dtype=self.dtype, **self._kw)
        except BaseException as e:  # handed to the caller's thread
            self._error = e
            # unblock a producer waiting on a full queue
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break

    def _put(self, item: Any) -> None:
        while True:
            if self._error is not None:
                self._raise_writer_error()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise_writer_error(self) -> None:
        e = self._error
        if isinstance(e, _Aborted) or e is None:
            return
        if isinstance(e, ScopertError):
            raise e
        if isinstance(e, OSError):
            raise OutputError(f"writing {self.path} failed: {e}; check free disk space and permissions") from e
        raise RunError(f"writing {self.path} failed in tifffile: {type(e).__name__}: {e}") from e

    # the caller's side ------------------------------------------------------------------
    def __enter__(self) -> TiffStreamWriter:
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._thread = threading.Thread(target=self._run, args=(tmp,), name="tiff-stream-writer", daemon=True)
        self._thread.start()
        return self

    def write(self, slab: Any) -> None:
        """Append ``slab`` (shape ``(k,) + shape[1:]``, axes as given) along axis 0."""
        if self._thread is None:
            raise RunError("TiffStreamWriter.write() called outside its 'with' block")
        slab = np.asarray(slab)
        if slab.shape[1:] != self.shape[1:] or slab.ndim != len(self.shape):
            raise ConfigError(
                f"slab of shape {slab.shape} does not fit an image of shape {self.shape}; "
                f"a slab must have shape (k,) + {self.shape[1:]}"
            )
        if self.rows_written + slab.shape[0] > self.shape[0]:
            raise ConfigError(
                f"slabs overrun axis 0: {self.rows_written} + {slab.shape[0]} rows > {self.shape[0]}"
            )
        if slab.shape[0] == 0:
            return
        data = to_bit_depth(slab, self.bits) if self.bits is not None else slab
        data = np.ascontiguousarray(np.transpose(data, self._perm), dtype=self.dtype)
        self._put(data)
        self.rows_written += slab.shape[0]

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        assert self._thread is not None and self._atomic is not None
        failure: BaseException | None = exc
        if failure is None and self.rows_written != self.shape[0]:
            failure = RunError(
                f"{self.path}: only {self.rows_written} of {self.shape[0]} rows were written; "
                "the output is incomplete and was not kept"
            )
        if failure is None:
            try:
                self._put(_DONE)
            except BaseException as e:
                failure = e
        if failure is not None and self._error is None:
            try:
                self._queue.put(_ABORT, timeout=5)
            except queue.Full:
                pass
        self._thread.join()
        if failure is None and self._error is not None:
            try:
                self._raise_writer_error()
            except BaseException as e:
                failure = e
        self._thread = None
        return finish_atomic(self._atomic, failure, exc)
