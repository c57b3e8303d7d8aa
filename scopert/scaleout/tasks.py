"""What runs on a Dask worker: one block of a volume (``run_block``) or one file of a folder (``run_file``).

The model is loaded once per worker process, not once per block: ``WorkerCache`` is a ``WorkerPlugin`` that
holds the loaded models (keyed by the model file's sha256, which the worker checks against the client's) and
the open inputs. Only a small ``VolumeJob`` (paths, the card's options, the fitted
normalization) travels with each task, never the session or the data.

A block reads its crop with halo straight from the input file, runs the same tiled ``Model.predict_to`` a
single-machine run runs, writes its core as whole chunks of the output store, fsyncs them, and only then writes
its ledger marker. Any failure is re-raised as ``BlockFailed`` naming the block, the worker and the cause.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from scopert.scaleout.blocks import Block
from scopert.scaleout.ledger import Ledger
from scopert.runtime.io.atomic import fsync_path

log = logging.getLogger(__name__)

PLUGIN_NAME = "scopert-worker-cache"


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


def compute_block(block: Block, job: VolumeJob, cache: WorkerCache) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The block's core in the output's axes and dtype, and the region of the output it fills."""
    from scopert.runtime.io import to_bit_depth
    from scopert.runtime.stitch import ArraySink

    model, lock = cache.model(job.model)
    image = cache.input(job.input_path, job.dataset, job.input_sha256)
    ranges = dict(zip(job.tiled_axes, block.read))
    crop = tuple(slice(*ranges[a]) if a in ranges else slice(None) for a in job.data_axes)
    data = np.asarray(image.array[crop])
    channels = data.shape[job.data_axes.index("c")] if "c" in job.data_axes else 1
    internal = (channels,) + tuple(data.shape[job.data_axes.index(a)] for a in job.tiled_axes)
    out = np.empty(model.output_shape(internal), np.float32)
    opts = job.opts
    with lock:
        model.predict_to(data, ArraySink(out), opts.tile, opts.overlap, opts.stitch, opts.batch,
                         axes=job.data_axes, window=opts.window, norm=job.norm)
    core = out[(slice(None),) + tuple(slice(int(round((c0 - r0) * s)), int(round((c1 - r0) * s)))
                                      for (c0, c1), (r0, _), s in zip(block.core, block.read, job.scales))]
    if "c" not in job.out_axes:
        core = core[0]
    axes = job.sink_axes if "c" in job.out_axes else job.sink_axes[1:]
    values = np.transpose(to_bit_depth(core, opts.bits), [axes.index(a) for a in job.out_axes])
    outs = dict(zip(job.tiled_axes, block.out))
    region = tuple(slice(*outs[a]) if a in outs else slice(None) for a in job.out_axes)
    return values, region


def run_block(block: Block, job: VolumeJob) -> dict[str, Any]:
    """Restore one block, write its core (whole chunks), make it durable, then mark it done in the ledger."""
    t0 = time.perf_counter()
    try:
        cache = worker_cache()
        values, region = compute_block(block, job, cache)
        t1 = time.perf_counter()
        array = cache.array(job.level0)
        array[region] = values
        _fsync_region(Path(job.level0), array, tuple(slice(s.start or 0, s.stop if s.stop is not None else n)
                                                     for s, n in zip(region, array.shape)))
        info = {"block": block.name, "worker": worker_label(), "compute_s": round(t1 - t0, 6),
                "write_s": round(time.perf_counter() - t1, 6)}
        Ledger.of(job.store).mark_done(block.name, info)
        info["seconds"] = time.perf_counter() - t0
        return info
    except Exception as e:  # noqa: BLE001 - one message that names the block, the worker and the cause
        raise BlockFailed(f"block {block.name} failed on worker {worker_label()}: {type(e).__name__}: {e}") from None


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
