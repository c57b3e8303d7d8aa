"""The threaded pipeline: reader -> tiler/batcher -> backend -> stitcher -> writer.

Stages run on their own threads joined by bounded queues, so reading and stitching overlap with
inference (ONNX Runtime and OpenVINO release the GIL while they compute). Memory is bounded by the
queue depths and the stitcher's open slabs. Each stage's busy and waiting time is counted, so a run can
say where it spent its time. Imports only numpy and the standard library.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from scopert.runtime.stitch import SlabSink
from scopert.runtime.tiling import Tile, TilePlan

log = logging.getLogger(__name__)

_DONE = object()


@dataclass
class StageTimes:
    busy: float = 0.0
    wait_in: float = 0.0
    wait_out: float = 0.0


@dataclass
class PipelineStats:
    tiles: int = 0
    batches: int = 0
    voxels_in: int = 0  # image voxels covered (not counting halo)
    seconds: float = 0.0
    stages: dict[str, StageTimes] = field(default_factory=lambda: {
        "read": StageTimes(), "infer": StageTimes(), "stitch": StageTimes(), "write": StageTimes()})

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds else 0.0

    @property
    def voxels_per_s(self) -> float:
        return self.voxels_in / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        parts = [f"{self.tiles} tiles in {self.seconds:.2f} s ({self.tiles_per_s:.1f} tiles/s, "
                 f"{self.voxels_per_s / 1e6:.2f} Mvox/s)"]
        for name, st in self.stages.items():
            parts.append(f"{name}: busy {st.busy:.2f} s, waiting {st.wait_in:.2f} s in / {st.wait_out:.2f} s out")
        return "; ".join(parts)


@dataclass
class Inference:
    """How the infer stage drives a backend: ``submit`` a batch, later ``collect`` its output.

    Up to ``in_flight`` batches are outstanding, so a backend with several slots (TensorRT: own context,
    stream and pinned buffers per slot) overlaps the copy-in, compute and copy-out of consecutive batches.
    ``Inference.blocking(fn)`` wraps a plain call (ORT, OpenVINO: they overlap within a batch themselves).
    """

    submit: Callable[[np.ndarray], Any]
    collect: Callable[[Any], np.ndarray]
    in_flight: int = 1

    @classmethod
    def blocking(cls, fn: Callable[[np.ndarray], np.ndarray]) -> "Inference":
        return cls(submit=fn, collect=lambda out: out, in_flight=1)


class _Stop(Exception):
    pass


class _Channel:
    """A bounded queue whose blocking calls give up when the run is aborted."""

    def __init__(self, depth: int, abort: threading.Event) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.abort = abort

    def put(self, item) -> float:
        t0 = time.perf_counter()
        while True:
            if self.abort.is_set():
                raise _Stop
            try:
                self.q.put(item, timeout=0.05)
                return time.perf_counter() - t0
            except queue.Full:
                continue

    def get(self):
        t0 = time.perf_counter()
        while True:
            if self.abort.is_set():
                raise _Stop
            try:
                return self.q.get(timeout=0.05), time.perf_counter() - t0
            except queue.Empty:
                continue


def run_pipeline(plan: TilePlan, read_tile: Callable[[Tile], np.ndarray],
                 infer: Callable[[np.ndarray], np.ndarray] | Inference,
                 make_stitcher: Callable[[SlabSink], object], sink: SlabSink, batch: int = 1, depth: int = 2,
                 on_tile: Callable[[int], None] | None = None) -> PipelineStats:
    """Run every tile of ``plan`` through ``infer`` and hand completed slabs to ``sink`` in order.

    ``make_stitcher(sink)`` builds the crop or blend stitcher that feeds the writer stage.

    ``read_tile`` returns one normalized, padded input tile (C, *tile); ``infer`` maps a stacked batch
    (B, C, *tile) to outputs (B, C_out, *tile_out), as a plain call or an :class:`Inference`.
    Raises the first error any stage hit.
    """
    inference = infer if isinstance(infer, Inference) else Inference.blocking(infer)
    stats = PipelineStats()
    abort = threading.Event()
    errors: list[BaseException] = []
    # One completed slab may wait for the writer: slabs are the largest buffers in a run.
    to_infer, to_stitch, to_write = _Channel(depth, abort), _Channel(depth, abort), _Channel(1, abort)

    def guarded(name: str, fn: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                fn()
            except _Stop:
                pass
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)
                abort.set()
        return body

    def reader() -> None:
        st = stats.stages["read"]
        pending: list[Tile] = []
        arrays: list[np.ndarray] = []
        for tile in plan:
            t0 = time.perf_counter()
            arrays.append(read_tile(tile))
            pending.append(tile)
            st.busy += time.perf_counter() - t0
            if len(pending) == batch:
                st.wait_out += to_infer.put((pending, np.stack(arrays)))
                pending, arrays = [], []
        if pending:
            st.wait_out += to_infer.put((pending, np.stack(arrays)))
        to_infer.put(_DONE)

    def inferrer() -> None:
        st = stats.stages["infer"]
        outstanding: deque = deque()

        def hand_on_oldest() -> None:
            tiles, ticket = outstanding.popleft()
            t0 = time.perf_counter()
            outputs = inference.collect(ticket)
            st.busy += time.perf_counter() - t0
            stats.batches += 1
            st.wait_out += to_stitch.put((tiles, outputs))

        while True:
            item, waited = to_infer.get()
            st.wait_in += waited
            if item is _DONE:
                break
            tiles, inputs = item
            t0 = time.perf_counter()
            outstanding.append((tiles, inference.submit(inputs)))
            st.busy += time.perf_counter() - t0
            if len(outstanding) >= inference.in_flight:
                hand_on_oldest()
        while outstanding:
            hand_on_oldest()
        to_stitch.put(_DONE)

    def stitch_stage() -> None:
        st = stats.stages["stitch"]
        row = None
        stitcher = make_stitcher(_ForwardSink(to_write, st))
        while True:
            item, waited = to_stitch.get()
            st.wait_in += waited
            if item is _DONE:
                break
            t0 = time.perf_counter()
            tiles, outputs = item
            for tile, out in zip(tiles, outputs):
                if row is not None and tile.index[0] != row:
                    stitcher.end_row()
                row = tile.index[0]
                stitcher.add(tile, out)
                stats.tiles += 1
                stats.voxels_in += int(np.prod([a.write_stop - a.write_start for a in tile.axes]))
                if on_tile is not None:
                    on_tile(1)
            st.busy += time.perf_counter() - t0
        t0 = time.perf_counter()
        stitcher.finish()
        st.busy += time.perf_counter() - t0
        to_write.put(_DONE)

    threads = [threading.Thread(target=guarded(n, f), name=f"scopert-{n}", daemon=True)
               for n, f in (("read", reader), ("infer", inferrer), ("stitch", stitch_stage))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    wst = stats.stages["write"]
    try:
        while True:
            item, waited = to_write.get()
            wst.wait_in += waited
            if item is _DONE:
                break
            t0 = time.perf_counter()
            sink.write(*item)
            wst.busy += time.perf_counter() - t0
    except _Stop:
        pass
    except BaseException:
        abort.set()
        raise
    finally:
        for t in threads:
            t.join()
    stats.seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    # Blend counts voxels of overlapping windows; report image voxels instead.
    stats.voxels_in = int(np.prod([p.size for p in plan.plans]))
    log.debug("pipeline: %s", stats.summary())  # per call (per frame when streaming): DEBUG
    return stats


class _ForwardSink:
    """Passes completed slabs from the stitcher thread to the writer (the caller's thread)."""

    def __init__(self, channel: _Channel, st: StageTimes) -> None:
        self.channel, self.st = channel, st

    def write(self, slab: np.ndarray, start: int) -> None:
        self.st.wait_out += self.channel.put((slab, start))
