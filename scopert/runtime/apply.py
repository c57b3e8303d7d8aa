"""``apply``: restore image files with a model, as 3D-RCAN's ``apply.py`` does, with bounded memory.

The output hyperstack holds the normalized raw, the restored image and (with ``-g``) the normalized
ground truth as channels. A single-channel 3D TIFF whose output needs no global statistics
(no ``--rescale`` or 0..1 range normalization) is streamed: it is read slab by slab from the file and
written slab by slab, so memory does not grow with the volume. Everything else runs in memory.
Every output is written atomically; inputs are opened read-only. Imports numpy and the runtime only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scopert.errors import ConfigError, InputError
from scopert.runtime.io import check_output_path, read_image, to_bit_depth, write_image
from scopert.runtime.io.tiff import TiffSlabReader, TiffStreamWriter
from scopert.runtime.model import Model
from scopert.runtime.normalize import fit_normalization

log = logging.getLogger(__name__)


@dataclass
class ApplyOptions:
    tile: Any = None
    overlap: Any = None
    stitch: str = "auto"
    batch: int | None = None
    axes: str | None = None
    bits: int = 32
    fmt: str = "imagej"
    normalize_output: bool = False
    rescale: bool = False
    p_min: float | None = None
    p_max: float | None = None
    dataset: str | None = None
    output_dataset: str = "predictions"
    window: str = "gaussian"

    def __post_init__(self) -> None:
        if self.bits not in (8, 16, 32):
            raise ConfigError(f"-b/--bpp {self.bits} is not supported; use 8, 16 or 32.")
        if self.normalize_output and self.rescale:
            raise ConfigError("--normalize_output_range_between_zero_and_one and --rescale exclude each other; "
                              "pick one.")
        if self.fmt not in ("imagej", "ome"):
            raise ConfigError(f"-f {self.fmt!r}: use imagej or ome.")


@dataclass
class ApplyResult:
    input: Path
    output: Path
    shape: tuple[int, ...]
    seconds: float
    voxels_per_s: float
    streamed: bool
    stats: dict[str, Any] = field(default_factory=dict)


class SlabVolume:
    """A TIFF series read lazily along axis 0; the last range read is cached for the tiles of one row."""

    def __init__(self, reader: TiffSlabReader) -> None:
        self.reader = reader
        self.shape = reader.shape
        self.dtype = reader.dtype
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self._cached: tuple[int, int, np.ndarray] | None = None

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        first = key[0]
        if isinstance(first, (int, np.integer)):
            return self[(slice(int(first), int(first) + 1),) + key[1:]][0]
        start, stop, _ = first.indices(self.shape[0])
        c = self._cached
        if c is None or not (c[0] <= start and stop <= c[1]):
            c = (start, stop, self.reader.read(start, stop))
            self._cached = c
        return c[2][(slice(start - c[0], stop - c[0]),) + key[1:]]


def _normalized(array: np.ndarray, model: Model, opts: ApplyOptions) -> np.ndarray:
    return fit_normalization(array, model.card.normalization, opts.p_min, opts.p_max)(np.asarray(array))


def _finish_channels(channels: list[np.ndarray], opts: ApplyOptions, gt_index: int | None) -> list[np.ndarray]:
    """--rescale (affine least-squares fit to the GT, as CARE) or min-max each channel to [0, 1]."""
    if opts.rescale:
        if gt_index is None:
            raise ConfigError("--rescale needs a ground truth (-g).")
        restored, gt = channels[1].astype(np.float64), channels[gt_index].astype(np.float64)
        cov = np.cov(restored.ravel(), gt.ravel())
        a = cov[0, 1] / cov[0, 0] if cov[0, 0] > 0 else 1.0
        b = gt.mean() - a * restored.mean()
        channels[1] = (a * restored + b).astype(np.float32)
    if opts.normalize_output:
        out = []
        for ch in channels:
            lo, hi = float(ch.min()), float(ch.max())
            out.append(((ch - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(ch, np.float32))
        channels = out
    return channels


def apply_file(model: Model, input_path: str | Path, output_path: str | Path, gt_path: str | Path | None = None,
               opts: ApplyOptions | None = None, progress: Callable[[int], None] | None = None) -> ApplyResult:
    """Restore one file; the output holds raw, restored (and GT) channels, written atomically."""
    import time

    opts = opts or ApplyOptions()
    input_path, output_path = Path(input_path), Path(output_path)
    check_output_path(output_path, [input_path] + ([Path(gt_path)] if gt_path else []))
    t0 = time.perf_counter()
    if _can_stream(model, input_path, output_path, gt_path, opts):
        stats = _apply_streamed(model, input_path, output_path, opts, progress)
        shape = stats.pop("shape")
        streamed = True
    else:
        shape = _apply_in_memory(model, input_path, output_path, gt_path, opts, progress)
        stats = model.last_stats.__dict__.copy() if model.last_stats else {}
        stats.pop("stages", None)
        streamed = False
    seconds = time.perf_counter() - t0
    voxels = float(np.prod(shape))
    log.info("%s -> %s: %s in %.2f s (%.2f Mvox/s)%s", input_path.name, output_path.name, shape, seconds,
             voxels / seconds / 1e6, " streamed" if streamed else "")
    return ApplyResult(input_path, output_path, tuple(shape), seconds, voxels / seconds, streamed, stats)


def _can_stream(model: Model, input_path: Path, output_path: Path, gt_path, opts: ApplyOptions) -> bool:
    card = model.card
    return (input_path.suffix.lower() in (".tif", ".tiff") and output_path.suffix.lower() in (".tif", ".tiff")
            and gt_path is None and not opts.rescale and not opts.normalize_output and opts.fmt == "imagej"
            and card.input.axes == "bczyx" and card.input.channels == 1 and opts.axes in (None, "zyx"))


def _apply_streamed(model: Model, input_path: Path, output_path: Path, opts: ApplyOptions, progress) -> dict:
    # Two readers: the pipeline's reader thread and the writer (raw channel) each seek their own file handle.
    with TiffSlabReader(input_path) as reader, TiffSlabReader(input_path) as raw_reader:
        if len(reader.shape) != 3:
            raise InputError(f"{input_path} has shape {reader.shape} (axes {reader.axes}); the 3D model takes zyx.")
        volume = SlabVolume(reader)
        norm = fit_normalization(volume, model.card.normalization, opts.p_min, opts.p_max)
        c_out = model.card.output.channels
        out_shape = model.output_shape((1,) + reader.shape)  # (C_out, z, y, x)
        scale = [o / i for o, i in zip(out_shape[1:], reader.shape)]
        channels = 1 + c_out
        names = ["Raw"] + (["Restored"] if c_out == 1 else [f"Restored {i}" for i in range(c_out)])
        same_grid = all(abs(s - 1.0) < 1e-9 for s in scale)
        if not same_grid:
            channels, names = c_out, names[1:]
        with TiffStreamWriter(output_path, (out_shape[1], channels) + out_shape[2:], np.float32, "zcyx",
                              fmt="imagej", channel_names=names, bits=opts.bits) as writer:

            class Sink:
                """Writes each output plane as it is composed, so no second copy of the slab is made."""

                def write(self, slab: np.ndarray, start: int) -> None:
                    for k in range(slab.shape[1]):
                        if same_grid:
                            raw = norm(raw_reader.read(start + k, start + k + 1))
                            plane = np.concatenate([raw, slab[:, k]], 0)
                        else:
                            plane = slab[:, k]
                        writer.write(plane[None])

            stats = model.predict_to(volume, Sink(), opts.tile, opts.overlap, opts.stitch, opts.batch,
                                     window=opts.window, progress=progress)
    return {"shape": reader.shape, "tiles": stats.tiles, "seconds": stats.seconds,
            "voxels_per_s": stats.voxels_per_s}


def _apply_in_memory(model: Model, input_path: Path, output_path: Path, gt_path, opts: ApplyOptions,
                     progress) -> tuple[int, ...]:
    with read_image(input_path, dataset=opts.dataset) as image:
        array = np.asarray(image.array)
        axes = opts.axes or _model_axes_from_file(model, image.axes, array)
    restored = model.predict(array, opts.tile, opts.overlap, opts.stitch, opts.batch, axes=axes,
                             pmin=opts.p_min, pmax=opts.p_max, window=opts.window, progress=progress)
    out_axes = model.output_axes(axes)
    if output_path.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        write_image(output_path, restored, axes=out_axes, dataset=opts.output_dataset)
        return array.shape
    gt = None
    if gt_path is not None:
        with read_image(gt_path, dataset=opts.dataset) as gt_image:
            gt = np.asarray(gt_image.array)
        if gt.shape != array.shape:
            raise InputError(f"the ground truth {gt_path} has shape {gt.shape}, the input {input_path} has "
                             f"{array.shape}; they must match. Pass the GT of this image.")
    if "c" in out_axes or restored.shape != array.shape:
        channels = [restored]  # multi-channel or rescaled outputs are written alone
        names = ["Restored"]
        stack_axes = out_axes
    else:
        channels = [_normalized(array, model, opts), restored]
        names = ["Raw", "Restored"]
        if gt is not None:
            channels.append(_normalized(gt, model, opts))
            names.append("Ground Truth")
        channels = _finish_channels(channels, opts, 2 if gt is not None else None)
        channels = [np.stack(channels)]
        stack_axes = "c" + out_axes
    result = channels[0]
    write_image(output_path, to_bit_depth(result, opts.bits), axes=stack_axes, fmt=opts.fmt, channel_names=names)
    return array.shape


def _model_axes_from_file(model: Model, file_axes: str | None, array: np.ndarray) -> str:
    """The file's axes when the model accepts them; otherwise the model's layout for this many dimensions."""
    from scopert.runtime.layout import data_axes_candidates, resolve_data_axes

    if file_axes and file_axes in data_axes_candidates(model.card):
        return file_axes
    return resolve_data_axes(array, model.card, None)
