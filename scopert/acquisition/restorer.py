"""Attach a loaded model to a pymmcore-plus core for one MDA: every frame restored or counted, nothing blocks.

``frameReady(img, event, meta)`` arrives on the MDA's thread. ``Restorer.frame_ready`` only hands the frame on: to
the store's writer thread (raw frames are never dropped; a disk slower than the camera holds the MDA back, and
that wait is timed) and, without a copy, to the model's ``FrameStream``, which drops and counts a frame when its
queue is full (``on_full="drop"``, the default) or holds the MDA back (``"block"``, asked for). Restored frames come
back in order on collector threads with their ``useq`` index and metadata; they go to the store and to
``on_restored`` (a viewer). How frames are grouped follows the model:

- 2D models: one frame at a time;
- 2D+t models: a stream per (position, channel), so a time window holds the same field of view and channel;
- 3D models: the planes of one (t, p, c) are gathered and the stack runs when its last plane arrives.

Every frame ends in one count: ``received = restored + dropped + failed + unfinished`` (``failed``: the model
raised; ``unfinished``: a z-stack the MDA never completed). ``finish`` ends it all cleanly, whatever happened:
cancel, an exception in inference, Ctrl-C.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from scopert.acquisition.layout import plan_store, sequence_sizes
from scopert.errors import ConfigError, ScopertError
from scopert.runtime.stream import FrameStream, ImageProcessor, make_frame_processor

log = logging.getLogger(__name__)

WRITE_QUEUE = 256  # planes waiting for the disk before the MDA is held back


@dataclass
class RestoredFrame:
    """One restored frame (2D models, 2D+t) or stack (3D models), with the MDA index it came from."""

    index: dict[str, int]  # useq axes: t, p, c, z (z absent for a stack)
    restored: np.ndarray  # (C_out, [Z,] Y, X)
    raw: np.ndarray  # the frame (Y, X) or the stack (Z, Y, X) it was restored from
    meta: dict[str, Any]
    latency_s: float  # from the frame's frameReady (a stack's last plane) to here; a 2D+t window waits for t+1


@dataclass
class AcquisitionReport:
    received: int = 0
    restored: int = 0
    dropped: int = 0
    failed: int = 0
    unfinished: int = 0
    finished: bool = False  # the MDA ran to its end (not cancelled, no Ctrl-C)
    cancelled: bool = False
    interrupted: bool = False  # Ctrl-C (KeyboardInterrupt) or SIGTERM
    error: str | None = None  # the first inference error, if any
    seconds: float = 0.0
    frame_interval_ms_p50: float = float("nan")  # the MDA's own pace, from frameReady to frameReady
    frame_interval_ms_p99: float = float("nan")
    latency_ms_p50: float = float("nan")  # frameReady -> restored frame
    latency_ms_p99: float = float("nan")
    write_wait_ms: float = 0.0  # total time the MDA waited for the disk
    restored_fps: float = 0.0
    output: str | None = None
    intervals: list[float] = field(default_factory=list, repr=False)
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def accounted(self) -> bool:
        return self.received == self.restored + self.dropped + self.failed + self.unfinished

    @property
    def kept_up(self) -> bool:
        return self.accounted and self.dropped == 0 and self.failed == 0 and self.unfinished == 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("intervals")
        out.pop("latencies")
        out["kept_up"] = self.kept_up
        return out


def _event_key(event: Any) -> dict[str, int]:
    return {str(getattr(k, "value", k)): int(v) for k, v in dict(event.index).items()}


class _Lane:
    """One FrameStream and the MDA indices of the frames it accepted, in order."""

    def __init__(self, restorer: "Restorer", key: Any, processor: Any) -> None:
        self.restorer = restorer
        self.stream = FrameStream(processor, on_full=restorer.on_full, max_queue=restorer.max_queue)
        self.pending: collections.deque[tuple[dict[str, int], np.ndarray, dict, float, int]] = collections.deque()
        self.failed = False
        self.collector = threading.Thread(target=self._collect, name=f"scopert-acquire-{key}", daemon=True)
        self.collector.start()

    def push(self, item: np.ndarray, index: dict[str, int], meta: dict, frames: int) -> str:
        """'accepted', 'dropped' or 'failed' (the model raised, now or before)."""
        if self.failed:
            return "failed"
        entry = (index, item, meta, time.perf_counter(), frames)
        self.pending.append(entry)  # before push: the collector may see the output before push returns
        try:
            accepted = self.stream.push(item)
        except Exception as exc:  # noqa: BLE001 - the model's error, raised again by push
            self.pending.remove(entry)
            self.restorer._inference_failed(exc)
            self.failed = True
            return "failed"
        if not accepted:
            self.pending.remove(entry)
            return "dropped"
        return "accepted"

    def _collect(self) -> None:
        try:
            for out in self.stream.results():
                index, raw, meta, t_in, frames = self.pending.popleft()
                self.restorer._restored(RestoredFrame(index, out, raw, meta, time.perf_counter() - t_in), frames)
        except Exception as exc:  # noqa: BLE001 - recorded, the acquisition goes on
            self.failed = True
            self.restorer._inference_failed(exc)

    def close(self) -> int:
        """End the stream, wait for its last outputs; return the frames it accepted but never restored."""
        self.stream.close()
        self.collector.join()
        return sum(p[4] for p in self.pending)


def restore_mode(card: Any, sequence: Any, name: str = "the model") -> str:
    """How the MDA's frames reach a model with ``card``: 'frame' (2D), 'time' (2D+t windows) or 'volume' (3D
    z-stacks); a model the sequence cannot feed is refused here, before a store or a thread exists."""
    axes = card.input.axes
    mode = "volume" if "z" in axes else "time" if "t" in axes else "frame"
    if "c" in axes and card.input.channels != 1:
        raise ConfigError(f"{name} takes {card.input.channels} channels per frame; an MDA delivers one channel per "
                          "frame: use a one-channel model.")
    if mode == "volume" and sequence_sizes(sequence)["z"] < 2:
        raise ConfigError(f"{name} is a 3D model but the sequence has no z-plan; add a z_plan (a stack per time "
                          "point) or use a 2D model.")
    return mode


class Restorer:
    """Restore the frames of one MDA (see the module doc); ``frame_ready`` is the frameReady slot."""

    def __init__(self, model: Any, sequence: Any, *, store: Any = None, on_full: str = "drop", max_queue: int = 4,
                 on_restored: Callable[[RestoredFrame], None] | None = None, **predict_kwargs: Any) -> None:
        if on_full not in ("drop", "block"):
            raise ConfigError(f"on_full={on_full!r}; use 'drop' (count and skip a frame) or 'block' (hold the MDA).")
        self.model, self.sequence, self.store = model, sequence, store
        self.on_full, self.max_queue, self.on_restored = on_full, max_queue, on_restored
        self.predict_kwargs = predict_kwargs
        self.sizes = sequence_sizes(sequence)
        self.mode = restore_mode(model.card, sequence, model.path.name)
        self.report = AcquisitionReport()
        self._lanes: dict[Any, _Lane] = {}
        self._stacks: dict[tuple[int, int, int], dict[int, tuple[np.ndarray, dict]]] = {}
        self._lock = threading.Lock()
        self._writes: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE)
        self._write_error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="scopert-acquire-writer", daemon=True)
        self._writer.start()
        self._last_frame: float | None = None
        self._last_t = -1  # the last time point acquired: the store keeps 0..this
        self._t0 = time.perf_counter()
        self._done = False

    # ---- the MDA's thread --------------------------------------------------------------------------------
    def frame_ready(self, img: np.ndarray, event: Any, meta: Any = None) -> None:
        """The ``frameReady`` slot: hand the frame on and return; never raises into the MDA."""
        now = time.perf_counter()
        if self._last_frame is not None:
            self.report.intervals.append(now - self._last_frame)
        self._last_frame = now
        try:
            index = _event_key(event)
            self._last_t = max(self._last_t, index.get("t", 0))
            meta = dict(meta or {})
            with self._lock:
                self.report.received += 1
            self._write("raw", index, img)
            if self.mode == "volume":
                self._add_plane(img, index, meta)
            else:
                self._count(self._lane(index).push(img, index, meta, 1), 1)
        except Exception:  # noqa: BLE001 - a bug here must not stop the microscope
            log.exception("frameReady handler failed; the frame is counted as failed")
            with self._lock:
                self.report.failed += 1

    def _lane(self, index: dict[str, int]) -> _Lane:
        key = (index.get("p", 0), index.get("c", 0)) if self.mode == "time" else None
        lane = self._lanes.get(key)
        if lane is None:
            processor = (make_frame_processor(self.model, **self.predict_kwargs) if self.mode == "time" else
                         ImageProcessor(self.model, **self.predict_kwargs))
            lane = self._lanes[key] = _Lane(self, key, processor)
        return lane

    def _add_plane(self, img: np.ndarray, index: dict[str, int], meta: dict) -> None:
        key = (index.get("t", 0), index.get("p", 0), index.get("c", 0))
        planes = self._stacks.setdefault(key, {})
        planes[index.get("z", 0)] = (img, meta)
        if len(planes) < self.sizes["z"]:
            return
        del self._stacks[key]
        stack = np.stack([planes[z][0] for z in sorted(planes)])
        stack_index = {k: v for k, v in index.items() if k != "z"}
        self._count(self._lane(stack_index).push(stack, stack_index, planes[max(planes)][1], len(planes)),
                    len(planes))

    def _count(self, outcome: str, frames: int) -> None:
        if outcome == "accepted":
            return
        with self._lock:
            if outcome == "dropped":
                self.report.dropped += frames
            else:
                self.report.failed += frames

    def _write(self, image: str, index: dict[str, int], data: np.ndarray) -> None:
        if self.store is None or self._write_error is not None:
            return
        try:
            self._writes.put_nowait((image, index, data))
        except queue.Full:  # the disk is slower than the camera: hold the MDA back rather than lose raw frames
            t = time.perf_counter()
            self._writes.put((image, index, data))
            self.report.write_wait_ms += 1000 * (time.perf_counter() - t)

    # ---- the collector threads ---------------------------------------------------------------------------
    def _restored(self, frame: RestoredFrame, frames: int) -> None:
        with self._lock:
            self.report.restored += frames
            self.report.latencies.append(frame.latency_s)
        out = frame.restored
        if out.ndim == frame.raw.ndim:  # one output channel, returned without its axis
            out = out[None]
        frame.restored = out
        self._write("restored", frame.index, out)
        if self.on_restored is not None:
            try:
                self.on_restored(frame)
            except Exception:  # noqa: BLE001 - a viewer's bug must not stop the acquisition
                log.exception("on_restored callback failed")

    def _inference_failed(self, exc: BaseException) -> None:
        with self._lock:
            if self.report.error is None:
                self.report.error = f"{type(exc).__name__}: {exc}"
                log.error("inference failed: %s; the raw frames are still written, the rest are counted as "
                          "failed", self.report.error)

    # ---- the writer thread -------------------------------------------------------------------------------
    def _region(self, image: str, index: dict[str, int], data: np.ndarray) -> tuple[Any, ...]:
        t, c, z = index.get("t", 0), index.get("c", 0), index.get("z", 0)
        if image == "raw":
            return (t, c, z)
        n = data.shape[0]
        if self.mode == "volume":
            return (t, slice(c * n, (c + 1) * n))
        return (t, slice(c * n, (c + 1) * n), z)

    def _write_loop(self) -> None:
        while True:
            item = self._writes.get()
            if item is None:
                return
            if self._write_error is not None:
                continue
            image, index, data = item
            try:
                self.store.write(image, self._region(image, index, data), data)
            except BaseException as exc:  # noqa: BLE001 - reported by finish
                self._write_error = exc
                log.error("writing the acquisition failed: %s", exc)

    # ---- the end -------------------------------------------------------------------------------------------
    def finish(self, finished: bool = True, cancelled: bool = False, interrupted: bool = False) -> AcquisitionReport:
        """End every stream, write what arrived, close the store; safe to call more than once."""
        report = self.report
        if self._done:
            return report
        self._done = True
        for planes in self._stacks.values():
            report.unfinished += len(planes)
        self._stacks.clear()
        for lane in self._lanes.values():
            left = lane.close()
            with self._lock:
                report.failed += left
        self._writes.put(None)
        self._writer.join()
        report.finished, report.cancelled, report.interrupted = finished, cancelled, interrupted
        report.seconds = time.perf_counter() - self._t0
        if report.intervals:
            report.frame_interval_ms_p50 = 1000 * float(np.percentile(report.intervals, 50))
            report.frame_interval_ms_p99 = 1000 * float(np.percentile(report.intervals, 99))
        if report.latencies:
            report.latency_ms_p50 = 1000 * float(np.percentile(report.latencies, 50))
            report.latency_ms_p99 = 1000 * float(np.percentile(report.latencies, 99))
        report.restored_fps = report.restored / report.seconds if report.seconds else 0.0
        if self.store is not None:
            summary = report.as_dict()
            summary.update(sequence=self.sequence.model_dump(mode="json") if hasattr(self.sequence, "model_dump")
                           else None, model=self.model.path.name, write_error=str(self._write_error or "") or None)
            report.output = str(self.store.close(summary, self._last_t + 1))
        if self._write_error is not None:
            raise ScopertError(f"writing the acquisition failed: {self._write_error}; the frames before it are in "
                               f"{report.output}")
        return report


@contextmanager
def attach(core: Any, model: Any, sequence: Any, out: str | Path | None = None, *, ngff: str = "0.4",
           on_full: str = "drop", max_queue: int = 4, on_restored: Callable[[RestoredFrame], None] | None = None,
           physical: dict[str, tuple[float, str]] | None = None, **predict_kwargs: Any) -> Iterator[Restorer]:
    """Restore every frame of the MDA run inside the block: ``with attach(core, model, seq, "o.zarr") as r:
    core.mda.run(seq)``; then ``r.report``. ``physical`` overrides sizes per axis as (size, unit)."""
    restore_mode(model.card, sequence, Path(model.path).name)  # refused before the store is created
    store = plan_store(core, model, sequence, out, ngff=ngff, physical=physical) if out is not None else None
    restorer = Restorer(model, sequence, store=store, on_full=on_full, max_queue=max_queue,
                        on_restored=on_restored, **predict_kwargs)
    state = {"cancelled": False}

    def cancelled(*_: Any) -> None:
        state["cancelled"] = True

    events = core.mda.events
    events.frameReady.connect(restorer.frame_ready)
    events.sequenceCanceled.connect(cancelled)
    finished = interrupted = False
    try:
        yield restorer
        finished = not state["cancelled"]
    except KeyboardInterrupt:
        interrupted = True
        _stop(core)
        raise
    finally:
        events.frameReady.disconnect(restorer.frame_ready)
        events.sequenceCanceled.disconnect(cancelled)
        restorer.finish(finished=finished, cancelled=state["cancelled"], interrupted=interrupted)


def _stop(core: Any) -> None:
    """After Ctrl-C inside ``mda.run``: cancel the MDA and stop a camera sequence still running in its thread."""
    for stop in (core.mda.cancel, core.stopSequenceAcquisition):
        try:
            stop()
        except Exception:  # noqa: BLE001 - nothing running, or a device that cannot say
            log.debug("stopping after an interrupt: %s failed", stop.__name__, exc_info=True)
