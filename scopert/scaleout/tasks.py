"""What runs on a Dask worker: one block of a volume (``run_block``, then ``run_rim`` for blend) or one file of a
folder (``run_file``).

The model is loaded once per worker process, not once per block: ``WorkerCache`` is a ``WorkerPlugin`` that
holds the loaded models (keyed by the model file's sha256, which the worker checks against the client's) and
the open inputs. Only a small ``VolumeJob`` (paths, the card's options, the fitted normalization, the run plan
less its tiles) travels with each task, never the session or the data.

A block reads the union of its tiles' windows straight from the input file and runs exactly its tiles (planned
on the client for the whole volume) with ``Model.run_plan``. Crop: it writes its core as whole chunks of the
output store. Blend: it writes the interior of its core and keeps the weighted sums of the rest of its reach
beside the store (``.scopert-sums/``); once every block has done so, ``run_rim`` adds the neighbours' sums over
the rim of each core and writes it. Chunks are fsynced before the ledger marker is written. Any failure is
re-raised as ``BlockFailed`` naming the block, the worker and the cause.
Imports numpy, distributed, scopert and (inside functions) zarr; never torch or onnx.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from scopert.scaleout.blocks import Block, Box, box_minus, intersect
from scopert.scaleout.ledger import Ledger
from scopert.runtime.io.atomic import atomic_path, fsync_path

log = logging.getLogger(__name__)

PLUGIN_NAME = "scopert-worker-cache"
SUMS_DIR = ".scopert-sums"  # inside the hidden store: blend sums kept for the rim pass
SUMS_MARK = "sums-"  # ledger name of a block whose first (blend) pass is done


class BlockFailed(RuntimeError):
    """A block or file failed on a worker; the message names the block, the worker and the cause."""


@dataclass(frozen=True)
class ModelRef:
    """How a worker finds and opens the model: a path on a shared file system and its sha256."""

    path: str
    sha256: str
    backend: str = "auto"
    device: str = "auto"


@dataclass(frozen=True)
class VolumeJob:
    """Everything a block task needs besides its Block (small: it travels with every task)."""

    model: ModelRef
    input_path: str
    input_sha256: str  # the ledger's fingerprint: a worker's open input is reused only for the same file
    dataset: str | None
    data_axes: str  # the input's axes
    tiled_axes: str  # the block grid's axes (loop axes, then the model's tiled axes)
    scales: tuple[float, ...]  # output/input per tiled axis
    opts: Any  # scopert.runtime.apply.ApplyOptions
    norm: Any  # scopert.runtime.normalize.AppliedNormalization, fitted once on the client
    store: str  # the output store (OME-Zarr group)
    level0: str  # its full-resolution array
    out_axes: str  # the output array's axes (NGFF order)
    sink_axes: str  # 'c' + tiled_axes: the order predict_to's output comes in
    run: Any = None  # scopert.runtime.model.RunPlan of the whole volume, less its tiles (each block brings its own)


def worker_label() -> str:
    """'NAME (ADDRESS on HOST)' of the worker running this task, or the host and pid outside Dask."""
    try:
        from distributed import get_worker

        w = get_worker()
        return f"{w.name} ({w.address} on {socket.gethostname()})"
    except (ImportError, ValueError):
        return f"pid {os.getpid()} on {socket.gethostname()}"


class WorkerCache(WorkerPlugin):
    """Per-worker cache of loaded models and open inputs (a distributed ``WorkerPlugin``)."""

    name = PLUGIN_NAME
    idempotent = True  # registering it again keeps the loaded models of a long-lived cluster

    def __init__(self) -> None:
        self._models: dict[str, tuple[Any, threading.Lock]] = {}
        self._inputs: OrderedDict[tuple[str, str | None, str], Any] = OrderedDict()
        self._lock: threading.Lock | None = None
        self.threads = 1
        self.loads = 0  # models loaded by this worker (a test checks: once, not once per block)

    def __getstate__(self) -> dict[str, Any]:  # what travels at registration: no locks, no sessions
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def setup(self, worker: Any = None) -> None:
        self._lock = threading.Lock()
        if worker is not None:
            self.threads = max(1, int(getattr(worker.state, "nthreads", 1)))

    def teardown(self, worker: Any = None) -> None:
        for image in self._inputs.values():
            image.close()
        self._inputs.clear()
        self._models.clear()

    def _guard(self) -> threading.Lock:
        if self._lock is None:
            self._lock = threading.Lock()
        return self._lock

    def model(self, ref: ModelRef) -> tuple[Any, threading.Lock]:
        """The loaded model for ``ref`` and a lock that serializes blocks on it (one pipeline at a time)."""
        with self._guard():
            if ref.sha256 not in self._models:
                from scopert.checksum import sha256_file
                from scopert.errors import InputError
                from scopert.runtime import load

                if not Path(ref.path).is_file():
                    raise InputError(f"the model {ref.path} is not readable here; put it on a file system every "
                                     "worker mounts at the same path")
                if sha256_file(ref.path) != ref.sha256:
                    raise InputError(f"the model {ref.path} here differs from the client's (sha256); copy the same "
                                     "file to every worker")
                model = load(ref.path, backend=ref.backend, device=ref.device, threads=self.threads)
                self._models[ref.sha256] = (model, threading.Lock())
                self.loads += 1
                log.info("worker loaded %s (%s)", Path(ref.path).name, model.backend.info.name)
            return self._models[ref.sha256]

    def input(self, path: str, dataset: str | None, fingerprint: str) -> Any:
        """The input opened lazily (memory-mapped TIFF, slab reader, HDF5, Zarr); the last two stay open.

        Keyed by the file's fingerprint too: a file replaced under the same name is opened again."""
        from scopert.runtime.apply import open_input

        key = (path, dataset, fingerprint)
        with self._guard():
            if key not in self._inputs:
                self._inputs[key] = open_input(Path(path), dataset)
                while len(self._inputs) > 2:
                    self._inputs.popitem(last=False)[1].close()
            return self._inputs[key]

    @staticmethod
    def array(level0: str) -> Any:
        """The output array, opened per block (a store removed and made again must not meet stale metadata)."""
        import zarr

        return zarr.open_array(store=level0, mode="r+")


def worker_cache() -> WorkerCache:
    """The cache plugin of the worker running this task (a fresh, unshared one outside Dask)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return WorkerCache()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if plugin is None:  # registered lazily: the first task on a worker that joined without it
        plugin = WorkerCache()
        plugin.setup(worker)
        worker.plugins[PLUGIN_NAME] = plugin
    return plugin


def _fsync_region(level0: Path, array: Any, region: tuple[slice, ...]) -> None:
    """fsync the chunk files a region covers (those Zarr stored: empty chunks are not written) and their folders."""
    spans = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, array.chunks)]
    folders = set()
    for idx in itertools.product(*spans):
        path = level0.joinpath(*map(str, idx))
        if path.is_file():
            fsync_path(path)
            folders.add(path.parent)
    for folder in folders:
        fsync_path(folder)


def _to_store(values: np.ndarray, job: VolumeJob) -> np.ndarray:
    """(C, *tiled) float values in the output array's axes and dtype."""
    from scopert.runtime.io import to_bit_depth

    if "c" not in job.out_axes:
        values = values[0]
    axes = job.sink_axes if "c" in job.out_axes else job.sink_axes[1:]
    return np.transpose(to_bit_depth(values, job.opts.bits), [axes.index(a) for a in job.out_axes])


def _region(box: Box, job: VolumeJob) -> tuple[slice, ...]:
    """The output array's region of a box over the tiled axes (output voxels)."""
    outs = dict(zip(job.tiled_axes, box))
    return tuple(slice(*outs[a]) if a in outs else slice(None) for a in job.out_axes)


def _write(cache: WorkerCache, job: VolumeJob, box: Box, values: np.ndarray) -> None:
    """Write (C, *box) values into the output and make them durable."""
    array = cache.array(job.level0)
    region = _region(box, job)
    array[region] = _to_store(values, job)
    _fsync_region(Path(job.level0), array, tuple(slice(s.start or 0, s.stop if s.stop is not None else n)
                                                 for s, n in zip(region, array.shape)))


def _read_block(model: Any, image: Any, block: Block, job: VolumeJob) -> tuple[np.ndarray, Any]:
    """The block's read range, prepared for the model with the volume's normalization."""
    ranges = dict(zip(job.tiled_axes, block.read))
    crop = tuple(slice(*ranges[a]) if a in ranges else slice(None) for a in job.data_axes)
    internal, _, norm = model.prepare(np.asarray(image.array[crop]), job.data_axes, norm=job.norm)
    return internal, norm


def _local(box: Box, origin: tuple[int, ...]) -> tuple[slice, ...]:
    return (slice(None),) + tuple(slice(lo - o, hi - o) for (lo, hi), o in zip(box, origin))


def sums_folder(job: VolumeJob, name: str) -> Path:
    """Where block ``name`` keeps the blend sums its neighbours add (inside the hidden store, removed at the end)."""
    return Path(job.store) / SUMS_DIR / name


def compute_block(block: Block, job: VolumeJob, cache: WorkerCache) -> None:
    """First pass: run the block's tiles. Crop (and whole-frame models): write its core. Blend: write its
    interior and keep the sums of the rest of its reach for the rim pass (``run_rim``)."""
    from scopert.runtime.layout import centre_frame_model
    from scopert.runtime.stitch import ArraySink

    model, lock = cache.model(job.model)
    if centre_frame_model(model.card):
        with lock:
            _write(cache, job, block.out, _frame_block(model, cache.input(job.input_path, job.dataset,
                                                                          job.input_sha256), block, job))
        return
    if block.tiles is None:  # blend: no tile of its own; the rim pass makes its whole core
        return
    image = cache.input(job.input_path, job.dataset, job.input_sha256)
    internal, norm = _read_block(model, image, block, job)
    shape = model.output_shape(internal.shape)
    origin = tuple(int(round(r0 * s)) for (r0, _), s in zip(block.read, job.scales))
    if block.sums is None:
        out = np.empty(shape, np.float32)
        with lock:
            model.run_plan(internal, norm, replace(job.run, plan=block.tiles), ArraySink(out))
        _write(cache, job, block.out, out[_local(block.out, origin)])
        return
    sums = np.empty((shape[0] + 1,) + shape[1:], np.float32)
    with lock:
        model.run_plan(internal, norm, replace(job.run, plan=block.tiles, sums=True), ArraySink(sums))
    if all(hi > lo for lo, hi in block.sums.interior):
        part = sums[_local(block.sums.interior, origin)]
        _write(cache, job, block.sums.interior, part[:-1] / part[-1:])
    folder = sums_folder(job, block.name)
    folder.mkdir(parents=True, exist_ok=True)
    for k, piece in enumerate(box_minus(block.sums.extent, block.sums.interior)):
        with atomic_path(folder / f"{k}.npy") as tmp, open(tmp, "wb") as fh:  # fsynced, renamed, or nothing
            np.save(fh, np.ascontiguousarray(sums[_local(piece, origin)]))
    fsync_path(folder)


def rim_values(block: Block, job: VolumeJob, piece: Box) -> np.ndarray:
    """Blend, second pass: one rim piece of the block's core from the sums of every block that reaches it."""
    acc = None
    for name, extent, interior in block.sums.sources:
        for k, src in enumerate(box_minus(extent, interior)):
            inter = intersect(piece, src)
            if inter is None:
                continue
            part = np.load(sums_folder(job, name) / f"{k}.npy", mmap_mode="r")
            if acc is None:
                acc = np.zeros((part.shape[0],) + tuple(hi - lo for lo, hi in piece), np.float32)
            acc[_local(inter, tuple(lo for lo, _ in piece))] += part[_local(inter, tuple(lo for lo, _ in src))]
    if acc is None or not np.all(acc[-1] > 0):
        raise RuntimeError(f"the blend sums of block {block.name} do not cover its core (a planning fault)")
    return acc[:-1] / acc[-1:]


def run_block(block: Block, job: VolumeJob) -> dict[str, Any]:
    """First pass on one block; then mark it done in the ledger (blend: its sums, ``sums-NAME``)."""
    t0 = time.perf_counter()
    try:
        compute_block(block, job, worker_cache())
        name = block.name if block.sums is None else f"{SUMS_MARK}{block.name}"
        info = {"block": name, "worker": worker_label(), "compute_s": round(time.perf_counter() - t0, 6)}
        Ledger.of(job.store).mark_done(name, info)
        info["seconds"] = time.perf_counter() - t0
        return info
    except Exception as e:  # noqa: BLE001 - one message that names the block, the worker and the cause
        raise BlockFailed(f"block {block.name} failed on worker {worker_label()}: {type(e).__name__}: {e}") from None


def run_rim(block: Block, job: VolumeJob) -> dict[str, Any]:
    """Blend, second pass on one block: finish the rim of its core from its neighbours' sums, mark it done."""
    t0 = time.perf_counter()
    try:
        cache = worker_cache()
        for piece in box_minus(block.out, block.sums.interior):
            _write(cache, job, piece, rim_values(block, job, piece))
        info = {"block": block.name, "worker": worker_label(), "seconds": time.perf_counter() - t0}
        Ledger.of(job.store).mark_done(block.name, info)
        return info
    except Exception as e:  # noqa: BLE001
        raise BlockFailed(f"block {block.name} (rim) failed on worker {worker_label()}: {type(e).__name__}: "
                          f"{e}") from None


def _frame_block(model: Any, image: Any, block: Block, job: VolumeJob) -> np.ndarray:
    """A window-of-frames model: each frame of the core from its (mirrored) window, as ``Model.predict`` does."""
    t_axis = job.data_axes.index("t")
    n = image.shape[t_axis]
    (t0, t1), opts = block.core[0], job.opts
    need = sorted({j for i in range(t0, t1) for j in model.frame_window(n, i)})
    lo, hi = need[0], need[-1] + 1
    crop = tuple(slice(lo, hi) if a == "t" else slice(None) for a in job.data_axes)
    movie = np.asarray(image.array[crop])
    movie = np.transpose(movie, [job.data_axes.index(a) for a in "t" + model.in_layout.tiled])
    frames = [model.predict_window(movie[[j - lo for j in model.frame_window(n, i)]], movie[i - lo], opts.tile,
                                   opts.overlap, opts.stitch, opts.batch, opts.window) for i in range(t0, t1)]
    return np.stack(frames)[None]


def run_file(src: str, dst: str, gt: str | None, opts: Any, model_ref: ModelRef) -> dict[str, Any]:
    """Restore one file of a folder run with ``apply_file`` (atomic: the output appears whole or not at all)."""
    t0 = time.perf_counter()
    try:
        from scopert.runtime.apply import apply_file

        model, lock = worker_cache().model(model_ref)
        with lock:
            result = apply_file(model, src, dst, gt, opts)
        return {"file": src, "output": dst, "shape": tuple(result.shape), "worker": worker_label(),
                "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001
        raise BlockFailed(f"{Path(src).name} failed on worker {worker_label()}: {type(e).__name__}: {e}") from None
