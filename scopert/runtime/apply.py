"""``apply``: restore image files with a model, as 3D-RCAN's ``apply.py`` does, with bounded memory.

A run has two steps. ``plan_apply`` decides everything before any tile runs and refuses what cannot work: output
suffix and format, output folder, the input's axes against the model's (a 2D model runs plane by plane over the
t and z of a stack), channels, tile against halo and divisor, the ground truth's shape, and free disk space for
the output's size. ``run_apply`` then streams: the input is read tile by tile (memory-mapped TIFF, slab-read
compressed TIFF, HDF5, Zarr), and output slabs are written plane by plane as the stitcher completes them.

TIFF outputs hold the normalized raw, the restored image and (with ``-g``) the normalized ground truth as
channels, as 3D-RCAN writes them; HDF5 (dataset ``predictions``) and OME-Zarr outputs hold the restored image.
Options that need the whole output first (``-g``, ``--rescale``, 0..1 output range) and frame-window models run
in memory. Every output is written atomically; inputs are opened read-only. Imports numpy and the runtime only.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scopert.errors import ConfigError, InputError
from scopert.runtime.compare import psnr_db
from scopert.runtime.io import check_output_path, read_image, to_bit_depth
from scopert.runtime.io.image import ImageData
from scopert.runtime.io.omezarr import NGFF_DEFAULT, check_ngff
from scopert.runtime.io.outputs import (OutputSpec, check_format_option, file_axes, open_writer, output_kind,
                                         tiff_format)
from scopert.runtime.io.space import check_free_space
from scopert.runtime.io.tiff import TiffSlabReader
from scopert.runtime.layout import (Layout, centre_frame_model, resolve_data_axes, shape_only, split_loop_axes,
                                   to_internal)
from scopert.runtime.model import Model
from scopert.runtime.normalize import fit_normalization

log = logging.getLogger(__name__)

CHANNEL_CHOICES = ("auto", "restored", "all")
"""What an output holds: ``auto`` as 3D-RCAN (TIFF: normalized raw, restored, normalized GT; HDF5/Zarr: restored
and the GT), ``restored`` only, or ``all`` three in every format."""

IN_MEMORY_BYTES = 256 * 2**20
"""Inputs up to this size are loaded whole (fast tile reads); larger ones are read tile by tile from the file."""


@dataclass
class ApplyOptions:
    tile: Any = None
    overlap: Any = None
    stitch: str = "auto"
    batch: int | None = None
    axes: str | None = None
    bits: int = 32
    fmt: str | None = None  # TIFF only: imagej or ome (default: by the output name)
    normalize_output: bool = False
    rescale: bool = False
    p_min: float | None = None
    p_max: float | None = None
    dataset: str | None = None
    output_dataset: str = "predictions"
    window: str = "gaussian"
    in_memory_bytes: int | None = None  # default: IN_MEMORY_BYTES
    channels: str = "auto"  # auto: TIFF raw+restored(+GT), HDF5/Zarr restored(+GT); restored; all
    raw_values: str = "normalized"  # the raw channel: the normalized input (3D-RCAN) or the input's own values
    channel: int | None = None  # run this one channel of a multi-channel input (--channel N)
    per_channel: bool = False  # run every channel on its own through a 1-channel model, keeping C (--per-channel)
    ngff: str | None = None  # OME-Zarr outputs: NGFF 0.4 (Zarr v2, the default) or 0.5 (Zarr v3)

    def __post_init__(self) -> None:
        if self.bits not in (8, 16, 32):
            raise ConfigError(f"-b/--bpp {self.bits} is not supported; use 8, 16 or 32.")
        if self.normalize_output and self.rescale:
            raise ConfigError("--normalize_output_range_between_zero_and_one and --rescale exclude each other; "
                              "pick one.")
        if self.channel is not None and self.per_channel:
            raise ConfigError("--channel N runs one channel and --per-channel runs each; pick one.")
        if self.ngff is not None:
            check_ngff(self.ngff)
        if self.raw_values not in ("normalized", "input"):
            raise ConfigError(f"--raw-values {self.raw_values!r}: use normalized or input.")
        if self.raw_values == "input" and self.bits != 32:
            raise ConfigError(f"--raw-values input keeps the input's own values, which -b {self.bits} would rescale "
                              "as restored values; use -b 32 (float32 holds 8- and 16-bit counts exactly).")
        if self.channels not in CHANNEL_CHOICES:
            raise ConfigError(f"--channels {self.channels!r}: use one of {', '.join(CHANNEL_CHOICES)}.")
        if self.fmt not in (None, "imagej", "ome"):
            raise ConfigError(f"-f {self.fmt!r}: use imagej or ome.")
        for name in ("p_min", "p_max"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 100:
                raise ConfigError(f"--{name} {value} is not a percentile; give a value between 0 and 100.")
        if self.p_min is not None and self.p_max is not None and self.p_min >= self.p_max:
            raise ConfigError(f"--p_min {self.p_min} must be below --p_max {self.p_max}.")


@dataclass
class ApplyResult:
    input: Path
    output: Path
    shape: tuple[int, ...]
    seconds: float
    voxels_per_s: float
    streamed: bool  # the output was written slab by slab as tiles completed (not composed in memory first)
    lazy_input: bool = False  # the input was read tile by tile from the file, not loaded whole
    stats: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # with -g: PSNR (peak 1) of raw and restored vs the GT


class SlabVolume:
    """A TIFF series read lazily along axis 0 into buffers of its own (never memory-mapped, so the file's pages
    do not pile up in the process's memory). The last row range read is kept for the other tiles of its row."""

    def __init__(self, reader: TiffSlabReader) -> None:
        self.reader = reader
        self.shape = reader.shape
        self.dtype = reader.dtype
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self._cached: tuple[int, int, np.ndarray] | None = None
        self._lock = threading.Lock()  # the file handle seeks: one read at a time

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        first = key[0]
        if isinstance(first, (int, np.integer)):
            return self[(slice(int(first), int(first) + 1),) + key[1:]][0]
        start, stop, _ = first.indices(self.shape[0])
        with self._lock:
            c = self._cached
            if c is None or not (c[0] <= start and stop <= c[1]):
                c = self._cached = (start, stop, self.reader.read(start, stop))
        return c[2][(slice(start - c[0], stop - c[0]),) + key[1:]]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """``np.asarray(volume)`` reads it whole, like any other array."""
        whole = self.reader.read(0, self.shape[0])
        return whole if dtype is None else whole.astype(dtype, copy=False)


class ChannelPlane:
    """One channel of a (lazy) array, its c axis taken out; only the parts that are sliced are read."""

    def __init__(self, array: Any, axis: int, channel: int) -> None:
        self.array, self.axis, self.channel = array, axis, channel
        shape = list(array.shape)
        del shape[axis]
        self.shape, self.dtype, self.ndim = tuple(int(n) for n in shape), array.dtype, len(shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        return np.asarray(self.array[key[:self.axis] + (self.channel,) + key[self.axis:]])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)


def channel_plane(array: Any, axis: int, channel: int) -> Any:
    """Channel ``channel`` of ``array`` along ``axis``: a view of an ndarray, a lazy plane of a file-backed one."""
    if isinstance(array, np.ndarray):
        return np.take(array, channel, axis=axis)
    return ChannelPlane(array, axis, channel)


CALIBRATION_BYTES = 64 * 2**20


def calibration_sample(array: Any) -> np.ndarray:
    """Real data for a precision gate: the whole input when small, else a central slab along axis 0 of about
    CALIBRATION_BYTES (a terabyte volume is not read to choose a precision)."""
    shape = tuple(int(n) for n in array.shape)
    row = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(array.dtype).itemsize
    rows = max(1, min(shape[0], CALIBRATION_BYTES // max(row, 1)))
    start = (shape[0] - rows) // 2
    return np.asarray(array[start:start + rows])


def open_input(path: Path, dataset: str | None) -> ImageData:
    """Open an input lazily: TIFF slab by slab with read() calls into buffers of its own (never memory-mapped:
    a mapped file cut mid-run kills the process with SIGBUS, and mapped pages pile up in its memory), HDF5 and
    Zarr as they are."""
    if path.is_file() and path.name.lower().endswith((".tif", ".tiff")):
        if dataset is not None:
            raise ConfigError(f"--dataset {dataset!r} was given but {path} is a TIFF; drop --dataset.")
        reader = TiffSlabReader(path)
        return ImageData(array=SlabVolume(reader), axes=reader.axes, path=path, source_axes=reader.source_axes,
                         channel_names=reader.channel_names, physical=reader.physical, _closer=reader.close)
    if not path.exists():
        raise InputError(f"-i {path} does not exist; check the path.")
    return read_image(path, dataset=dataset)


@dataclass
class ApplyJob:
    """Everything decided before the first tile runs; holds the open input until closed."""

    model: Model
    input_path: Path
    output_path: Path
    gt_path: Path | None
    opts: ApplyOptions
    image: ImageData
    data_axes: str
    sink_axes: str  # 'c' + the output's other axes in the pipeline's order (slowest first)
    out: OutputSpec
    raw_channels: int  # input channels written before the restored ones (same grid only), else 0
    gt_channels: int  # ground-truth channels written after the restored ones, else 0
    split_axis: int | None  # the input's c axis under --per-channel (each channel a run) or --channel, else None
    in_memory: bool  # the whole output is composed before writing (-g, --rescale, 0..1, frame-window models)
    n_tiles: int

    def close(self) -> None:
        self.image.close()

    def __enter__(self) -> "ApplyJob":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plan_apply(model: Model, input_path: str | Path, output_path: str | Path, gt_path: str | Path | None = None,
               opts: ApplyOptions | None = None) -> ApplyJob:
    """Check every argument, path and size against the model and the input's header; read no pixel data."""
    opts = opts or ApplyOptions()
    input_path, output_path = Path(input_path), Path(output_path)
    gt_path = Path(gt_path) if gt_path else None
    kind = output_kind(output_path)
    check_format_option(kind, opts.fmt, output_path.name, opts.ngff)
    check_output_path(output_path, [input_path] + ([gt_path] if gt_path else []))
    image = open_input(input_path, opts.dataset)
    try:
        job = _plan(model, input_path, output_path, gt_path, opts, image, kind)
    except BaseException:
        image.close()
        raise
    check_free_space(output_path, job.out.nbytes, f"the output {output_path.name}")
    return job


def _plan(model: Model, input_path: Path, output_path: Path, gt_path: Path | None, opts: ApplyOptions,
          image: ImageData, kind: str) -> ApplyJob:
    card = model.card
    shape = file_shape = image.shape
    stated_axes = None if image.axes_guessed else image.axes  # a file that does not say is read by dimensions
    axes, split_axis, n_split = opts.axes, None, 1
    if opts.channel is not None or opts.per_channel:
        shape, axes, split_axis, n_split = _take_channels(image, opts, stated_axes, input_path.name)
        stated_axes = None
    data_axes = resolve_data_axes(shape_only(shape), card, axes, stated_axes, where=input_path.name)
    loop, _ = split_loop_axes(data_axes, card)
    centre = centre_frame_model(card)
    layout = model.in_layout.with_loop(loop)
    internal_shape = to_internal(shape_only(shape), data_axes, layout).shape
    if centre:
        frames = shape[data_axes.index("t")]
        model.frame_window(frames, 0)  # refuses a movie shorter than the window
        spatial = {a: shape[data_axes.index(a)] for a in model.in_layout.tiled}
        n_tiles = frames * model.make_plan(spatial, opts.tile, opts.overlap, opts.stitch, opts.batch,
                                           opts.window).plan.n_tiles
        order = "t" + model.out_layout.tiled
        out_internal = (card.output.channels, frames) + tuple(
            int(round(spatial[a] * card.output.scale.get(a, 1.0))) for a in model.out_layout.tiled)
    else:
        model._check_time_window(shape_only(internal_shape))
        rp = model.plan_for(shape_only(internal_shape), data_axes, opts.tile, opts.overlap, opts.stitch, opts.batch,
                            opts.window)
        n_tiles = rp.plan.n_tiles
        order = layout.all_tiled
        out_internal = model.output_shape(internal_shape)
    if opts.rescale and gt_path is None:
        raise ConfigError("--rescale fits the output to a ground truth; pass one with -g.")
    if gt_path is not None:
        with open_input(gt_path, opts.dataset) as gt:
            if gt.shape != file_shape:
                raise InputError(f"the ground truth {gt_path} has shape {gt.shape}, the input {input_path} has "
                                 f"{file_shape}; they must match. Pass the GT of this image.")
    in_channels = (shape[data_axes.index("c")] if "c" in data_axes else 1) * n_split
    if opts.rescale and card.output.channels != in_channels:
        raise ConfigError(f"--rescale fits each restored channel to its ground truth, but this model maps "
                          f"{in_channels} input channel(s) to {card.output.channels}; drop --rescale.")
    same_grid = _same_grid(card)
    if not same_grid and opts.channels == "all":
        raise ConfigError(f"--channels all puts the input beside the output, but this model changes the pixel grid "
                          f"(scale {card.output.scale}); use --channels restored or auto.")
    wants_raw = opts.channels == "all" or (opts.channels == "auto" and kind == "tiff")
    raw_channels = in_channels if wants_raw and same_grid else 0
    gt_channels = in_channels if gt_path is not None and same_grid and opts.channels != "restored" else 0
    if gt_path is not None and not gt_channels:
        log.info("the ground truth is not written to %s (%s); it is used for the metrics only", output_path.name,
                 "--channels restored" if same_grid else "the model changes the pixel grid")
    c_out = card.output.channels * n_split
    total = raw_channels + c_out + gt_channels
    keep_c = total > 1 or "c" in data_axes or n_split > 1
    sink_axes = "c" + order
    out_axes = file_axes(kind, sink_axes if keep_c else order)
    sizes = dict(zip(sink_axes, (total,) + tuple(out_internal[1:])))
    names = None
    if keep_c:
        names = (_names("Raw", raw_channels) + _names("Restored", c_out) + _names("Ground Truth", gt_channels))
    dtype = {8: np.uint8, 16: np.uint16, 32: np.float32}[opts.bits]
    scale = {a: 1.0 / float(card.output.scale.get(a, 1.0)) for a in out_axes if a in "zyx"}
    physical = None
    if image.physical:  # the input's pixel sizes, after the model's scale along its own axes
        physical = image.physical.scaled({a: float(card.output.scale.get(a, 1.0))
                                          for a in model.in_layout.tiled}).for_axes(out_axes) or None
    out = OutputSpec(output_path, kind, out_axes, tuple(sizes[a] for a in out_axes), np.dtype(dtype),
                     fmt=tiff_format(output_path, opts.fmt) if kind == "tiff" else None, channel_names=names,
                     dataset=opts.output_dataset, scale=scale, physical=physical, ngff=opts.ngff or NGFF_DEFAULT,
                     attrs={"scopert_model": model.path.name, "scopert_input": input_path.name})
    in_memory = centre or gt_path is not None or opts.rescale or opts.normalize_output or n_split > 1
    return ApplyJob(model, input_path, output_path, gt_path, opts, image, data_axes, sink_axes, out,
                    raw_channels, gt_channels, split_axis, in_memory, n_tiles * n_split)


def _same_grid(card) -> bool:
    """True when the output lies on the input's pixel grid (no scale): only then can raw and GT sit beside it."""
    return all(abs(float(s) - 1.0) < 1e-9 for s in card.output.scale.values())


def _take_channels(image: ImageData, opts: ApplyOptions, stated_axes: str | None,
                   name: str) -> tuple[tuple[int, ...], str, int, int]:
    """--channel N / --per-channel: the shape and axes a 1-channel model sees (the c axis taken out), that axis's
    index in the file and how many runs it makes (1 for --channel, whose image now reads that channel only)."""
    shape = image.shape
    stated = (opts.axes or stated_axes or "").lower()
    option = "--per-channel" if opts.per_channel else f"--channel {opts.channel}"
    if "c" not in stated:
        raise ConfigError(f"{option} needs a channel axis, but {name} has axes {stated or 'that it does not state'} "
                          f"(shape {shape}); say them with --axes (e.g. --axes {'c' + 'tzyx'[-(len(shape) - 1):]}).")
    ci = stated.index("c")
    n_c = shape[ci]
    if opts.per_channel:
        return shape[:ci] + shape[ci + 1:], stated.replace("c", ""), ci, n_c
    if not 0 <= opts.channel < n_c:
        raise ConfigError(f"--channel {opts.channel}: {name} has {n_c} channels; give 0 to {n_c - 1}.")
    image.array = channel_plane(image.array, ci, opts.channel)  # the job reads that channel only, lazily
    if image.channel_names:
        image.channel_names = [image.channel_names[opts.channel]]
    return image.shape, stated.replace("c", ""), ci, 1


def _names(base: str, n: int) -> list[str]:
    return [base] if n == 1 else [f"{base} {i}" for i in range(n)]


class _FileSink:
    """Turns pipeline slabs (C_out, n, ...) into output planes: raw channels beside them, bit depth, file order."""

    def __init__(self, job: ApplyJob, writer, raw: Callable[[int, int], np.ndarray] | None) -> None:
        self.job, self.writer, self.raw = job, writer, raw
        axes = job.sink_axes if "c" in job.out.axes else job.sink_axes[1:]
        self.perm = [axes.index(a) for a in job.out.axes]
        self.slab_axis = job.out.axes.index(job.sink_axes[1])
        # Rows of a chunk along the slab axis: HDF5 and Zarr recompress a whole chunk on every write, so rows of
        # a 2D image (slab axis y) are gathered into chunk-aligned blocks (a 600x600 image: 2 writes, not 600).
        self.total = job.out.shape[self.slab_axis]
        along_rows = job.sink_axes[1] in "yx"
        self.rows = {"zarr": 512, "hdf5": 256}.get(job.out.kind, 1) if along_rows else 1
        self._pending: list[np.ndarray] = []
        self._pending_start = 0

    def write(self, slab: np.ndarray, start: int) -> None:
        for k in range(slab.shape[1]):  # plane by plane: no second copy of a whole slab
            plane = slab[:, k:k + 1]
            if self.raw is not None:
                plane = np.concatenate([self.raw(start + k, start + k + 1), plane], 0)
            if self.rows == 1:
                self.put(plane, start + k)
                continue
            if not self._pending:
                self._pending_start = start + k
            self._pending.append(plane)
            end = start + k + 1
            if end % self.rows == 0 or end == self.total:
                self.put(np.concatenate(self._pending, 1), self._pending_start)
                self._pending = []

    def put(self, block: np.ndarray, start: int) -> None:
        """Write ``block`` (channels, n, ...) in the sink's axes at ``start`` along the slab axis."""
        if "c" not in self.job.out.axes:
            block = block[0]
        data = np.transpose(to_bit_depth(block, self.job.opts.bits), self.perm)
        region = [slice(None)] * data.ndim
        region[self.slab_axis] = slice(start, start + data.shape[self.slab_axis])
        self.writer.write(tuple(region), data)


def _raw_source(job: ApplyJob, array):
    """The input again for the raw channel: a TIFF read slab by slab gets a reader of its own, which the
    writer reads plane by plane while the pipeline's reader is rows ahead."""
    if isinstance(array, ChannelPlane) and isinstance(array.array, SlabVolume):
        return ChannelPlane(SlabVolume(TiffSlabReader(job.input_path)), array.axis, array.channel)
    if isinstance(array, SlabVolume):
        return SlabVolume(TiffSlabReader(job.input_path))
    return array


def _sink_view(array, data_axes: str, sink_axes: str):
    """The input arranged in the sink's axes (channels first), read lazily where the input is lazy."""
    return to_internal(array, data_axes, Layout("", "c", sink_axes[1:]))


def run_apply(job: ApplyJob, progress: Callable[[int], None] | None = None) -> ApplyResult:
    """Run a planned job: restore and write the output (atomically)."""
    model, opts = job.model, job.opts
    t0 = time.perf_counter()
    array = job.image.array
    nbytes = int(np.prod(job.image.shape, dtype=np.int64)) * np.dtype(job.image.dtype).itemsize
    limit = IN_MEMORY_BYTES if opts.in_memory_bytes is None else opts.in_memory_bytes
    lazy = not job.in_memory and nbytes > limit
    if not lazy:
        array = np.asarray(array)
    # TIFF is written page by page: slabs must run along the file's first axis, and that axis must hold pages
    tiff_streams = job.out.axes[0] == job.sink_axes[1] and job.out.axes[0] not in "yx"
    stream = not job.in_memory and (job.out.kind != "tiff" or tiff_streams)
    metrics: dict[str, float] = {}
    if job.in_memory:
        metrics = _run_in_memory(job, array, progress)
    else:
        internal, data_axes, norm = model.prepare(array, job.data_axes, opts.p_min, opts.p_max)
        rp = model.plan_for(internal, data_axes, opts.tile, opts.overlap, opts.stitch, opts.batch, opts.window)
        raw_source = _raw_source(job, array) if job.raw_channels else None
        raw_view = None if raw_source is None else _sink_view(raw_source, job.data_axes, job.sink_axes)
        raw_values = norm if opts.raw_values == "normalized" else _as_float
        try:
            with open_writer(job.out, stream=stream) as writer:
                sink = _FileSink(job, writer, None if raw_view is None else
                                 (lambda lo, hi: raw_values(np.asarray(raw_view[:, lo:hi]))))
                model.run_plan(internal, norm, rp, sink, progress)
        finally:
            reader_of = raw_source.array if isinstance(raw_source, ChannelPlane) else raw_source
            if isinstance(reader_of, SlabVolume) and raw_source is not array:
                reader_of.reader.close()
    seconds = time.perf_counter() - t0
    stats = dict(model.last_stats.__dict__) if model.last_stats else {}
    stats.pop("stages", None)
    voxels = float(np.prod(job.image.shape))
    log.debug("%s -> %s: %s in %.2f s (%.2f Mvox/s)%s%s", job.input_path.name, job.output_path.name,
             job.image.shape, seconds, voxels / seconds / 1e6, ", read tile by tile" if lazy else "",
             ", written slab by slab" if stream else "")
    return ApplyResult(job.input_path, job.output_path, job.image.shape, seconds, voxels / seconds, stream, lazy,
                       stats, metrics)


def _run_in_memory(job: ApplyJob, array: np.ndarray, progress) -> dict[str, float]:
    """Compose the whole output first: -g, --rescale, the 0..1 range, frame-window models and --per-channel.

    Returns the metrics against the ground truth (PSNR with peak 1 on normalized images, as 3D-RCAN's apply),
    empty without one."""
    gt_array = None
    if job.gt_path is not None:
        with open_input(job.gt_path, job.opts.dataset) as gt:
            gt_array = np.asarray(gt.array)
    if job.opts.channel is not None and gt_array is not None:
        gt_array = np.take(gt_array, job.opts.channel, axis=job.split_axis)
    if job.split_axis is None or job.opts.channel is not None:
        channels = _compose(job, array, gt_array, progress)
    else:  # each input channel on its own (its own normalization too), then side by side: raw, restored, GT
        parts = [_compose(job, np.take(array, i, axis=job.split_axis),
                          None if gt_array is None else np.take(gt_array, i, axis=job.split_axis), progress)
                 for i in range(array.shape[job.split_axis])]
        channels = {k: np.concatenate([p[k] for p in parts], 0) for k in parts[0]}
    channels = _finish_channels(channels, job.opts)
    metrics = {}
    gt = channels.get("gt")
    if gt is not None and gt.shape == channels["restored"].shape:
        if "raw" in channels and channels["raw"].shape == gt.shape:
            metrics["psnr_raw_db"] = psnr_db(gt, channels["raw"], peak=1.0)  # 3D-RCAN: peak 1 on normalized
        metrics["psnr_restored_db"] = psnr_db(gt, channels["restored"], peak=1.0)
        log.info("%s vs the ground truth: PSNR %s", job.input_path.name,
                 ", ".join(f"{k.split('_')[1]} {v:.2f} dB" for k, v in metrics.items()))
    written = [channels.get("raw_input", channels.get("raw"))] if job.raw_channels else []
    written.append(channels["restored"])
    if job.gt_channels:
        written.append(channels["gt"])
    with open_writer(job.out, stream=False) as writer:
        _FileSink(job, writer, None).put(np.concatenate(written, 0), 0)
    return metrics


def _compose(job: ApplyJob, array: np.ndarray, gt_array: np.ndarray | None, progress) -> dict[str, np.ndarray]:
    """The normalized raw, the restored image and the normalized GT, each (channels, *sink axes)."""
    model, opts = job.model, job.opts
    norm = fit_normalization(array, model.card.normalization, opts.p_min, opts.p_max)
    restored = model.predict(array, opts.tile, opts.overlap, opts.stitch, opts.batch, axes=job.data_axes,
                             pmin=opts.p_min, pmax=opts.p_max, window=opts.window, progress=progress, norm=norm)
    channels = {"restored": _sink_view(restored, model.output_axes(job.data_axes), job.sink_axes)}
    if _same_grid(model.card):
        raw = _sink_view(array, job.data_axes, job.sink_axes)
        channels["raw"] = norm(raw)  # the metrics compare normalized images
        if opts.raw_values == "input":
            channels["raw_input"] = _as_float(raw)
    if gt_array is not None:
        gt_norm = fit_normalization(gt_array, model.card.normalization, opts.p_min, opts.p_max)
        channels["gt"] = gt_norm(_sink_view(gt_array, job.data_axes, job.sink_axes))
    return channels


def _as_float(values: np.ndarray) -> np.ndarray:
    """The input's own values in the output's float32 (exact for 8- and 16-bit counts)."""
    return np.asarray(values, np.float32)


def _finish_channels(channels: dict[str, np.ndarray], opts: ApplyOptions) -> dict[str, np.ndarray]:
    """--rescale (affine least-squares fit of the restored image to the GT, as CARE) or each channel to [0, 1]."""
    if opts.rescale:
        restored, gt = channels["restored"].astype(np.float64), channels["gt"].astype(np.float64)
        cov = np.cov(restored.ravel(), gt.ravel())
        a = cov[0, 1] / cov[0, 0] if cov[0, 0] > 0 else 1.0
        b = gt.mean() - a * restored.mean()
        channels["restored"] = (a * restored + b).astype(np.float32)
    if opts.normalize_output:
        out = {}
        for name, ch in channels.items():
            lo, hi = float(ch.min()), float(ch.max())
            out[name] = ((ch - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(ch, np.float32)
        channels = out
    return channels


def apply_file(model: Model, input_path: str | Path, output_path: str | Path, gt_path: str | Path | None = None,
               opts: ApplyOptions | None = None, progress: Callable[[int], None] | None = None) -> ApplyResult:
    """Restore one file; the output is written atomically (see the module doc for its channels)."""
    with plan_apply(model, input_path, output_path, gt_path, opts) as job:
        return run_apply(job, progress)

