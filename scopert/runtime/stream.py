"""The acquisition-side API: push frames as a camera delivers them, read restored frames in order.

A ``FrameStream`` owns one worker thread. Backpressure is explicit: ``on_full='block'`` makes ``push``
wait for room, ``on_full='drop'`` refuses the frame and counts it. Nothing is dropped silently: every
frame is either processed or counted in ``dropped``. Frame processors turn the accepted frames into
outputs: independent images, sliding windows for models that return the centre frame of a window, or
chunks of ``time_window`` frames for 2D+t models. Imports numpy and the standard library.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from scopert.errors import ConfigError, InputError

_END = object()
LATENCY_WINDOW = 100_000  # outputs whose latency is kept for the percentiles


@dataclass
class StreamStats:
    received: int = 0  # frames offered to push()
    accepted: int = 0
    dropped: int = 0
    produced: int = 0  # outputs handed back
    # seconds from push to output, for the last LATENCY_WINDOW outputs: a stream that runs for days keeps a
    # bounded record (a plain list grew by 32 bytes per frame, 1.2 MB an hour at 10 fps)
    latencies: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW))
    max_queue_depth: int = 0

    def latency_percentile(self, q: float) -> float:
        """The ``q``-th percentile of the latency over the last ``LATENCY_WINDOW`` outputs."""
        return float(np.percentile(np.asarray(self.latencies), q)) if self.latencies else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "accepted": self.accepted, "dropped": self.dropped,
                "produced": self.produced, "latency_p50_s": self.latency_percentile(50),
                "latency_p99_s": self.latency_percentile(99), "max_queue_depth": self.max_queue_depth}


class ImageProcessor:
    """Each pushed item is a whole image (2D or 3D) restored on its own."""

    def __init__(self, model, **kw) -> None:
        self.model, self.kw = model, kw

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        return [self.model.predict(frame, **self.kw)]

    def flush(self) -> list[np.ndarray]:
        return []


class CentreWindowProcessor:
    """Models that turn a window of frames into its centre frame: output i needs frames up to i + half.

    Windows are mirrored at the start and at the end of the acquisition, exactly as offline ``predict``.
    """

    def __init__(self, model, **kw) -> None:
        self.model, self.kw = model, kw
        self.size = model.card.input.time_window
        self.half = self.size // 2
        self.frames: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self.count = 0
        self.next_out = 0

    def _window(self, i: int, n_frames: int | None) -> np.ndarray:
        n = n_frames if n_frames is not None else 1 << 60
        idx = self.model.frame_window(max(n, self.size), i)
        return np.stack([self.frames[j] for j in idx])

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        self.frames[self.count] = np.asarray(frame)
        self.count += 1
        out = []
        while self.count >= self.size and self.next_out + self.half < self.count:
            i = self.next_out
            out.append(self.model.predict_window(self._window(i, None), self.frames[i], **self.kw))
            self.next_out += 1
        while self.frames and next(iter(self.frames)) < self.next_out - self.half - 1:
            self.frames.popitem(last=False)
        return out

    def flush(self) -> list[np.ndarray]:
        n = self.count
        if n and n < self.size:
            raise InputError(f"the stream ended after {n} frames, fewer than the model's time window of "
                             f"{self.size}; push at least {self.size} frames.")
        out = []
        for i in range(self.next_out, n):
            out.append(self.model.predict_window(self._window(i, n), self.frames[i], **self.kw))
        self.next_out = n
        return out


class ChunkProcessor:
    """2D+t models (time in and out): consecutive chunks of ``time_window`` frames, one output per frame.

    The last, shorter chunk is run together with the frames before it (a full window) and only its own
    frames are emitted, so the stream's end is restored with full temporal context.
    """

    def __init__(self, model, **kw) -> None:
        self.model, self.kw = model, kw
        self.size = model.card.input.time_window
        self.buffer: list[np.ndarray] = []
        self.previous: list[np.ndarray] = []

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        self.buffer.append(np.asarray(frame))
        if len(self.buffer) < self.size:
            return []
        chunk, self.previous, self.buffer = self.buffer, self.buffer, []
        return list(self.model.predict(np.stack(chunk), **self.kw))

    def flush(self) -> list[np.ndarray]:
        n = len(self.buffer)
        if not n:
            return []
        window = (self.previous + self.buffer)[-self.size:]
        if len(window) < self.size:
            raise InputError(f"the stream ended after {len(window)} frames, fewer than the model's time window of "
                             f"{self.size}; push at least {self.size} frames.")
        self.buffer = []
        return list(self.model.predict(np.stack(window), **self.kw))[-n:]


def make_frame_processor(model, **predict_kwargs):
    axes_in, axes_out = model.card.input.axes, model.card.output.axes
    if "t" in axes_in and "t" not in axes_out:
        return CentreWindowProcessor(model, **predict_kwargs)
    if "t" in axes_in:
        return ChunkProcessor(model, **predict_kwargs)
    return ImageProcessor(model, **predict_kwargs)


class FrameStream:
    """Push frames in, read outputs out, in order, with explicit block/drop backpressure."""

    def __init__(self, processor, on_full: str = "block", max_queue: int = 8) -> None:
        if on_full not in ("block", "drop"):
            raise ConfigError(f"on_full={on_full!r}; use 'block' (wait for room) or 'drop' (count and skip).")
        if max_queue < 1:
            raise ConfigError(f"max_queue must be >= 1, got {max_queue}.")
        self.processor, self.on_full = processor, on_full
        self.stats = StreamStats()
        self._in: queue.Queue = queue.Queue(maxsize=max_queue)
        self._out: queue.Queue = queue.Queue()  # unbounded: a slow reader must never stall the camera side
        self._push_times: collections.deque[float] = collections.deque()
        self._closed = False
        self._error: BaseException | None = None
        self._worker = threading.Thread(target=self._work, name="scopert-stream", daemon=True)
        self._worker.start()

    # ---- producer side (acquisition code) -----------------------------------------------------------
    def push(self, frame: np.ndarray) -> bool:
        """Offer one frame; returns False when it was dropped (``on_full='drop'`` and the queue is full)."""
        if self._closed:
            raise ConfigError("push() after close(): open a new stream for a new acquisition.")
        if self._error is not None:
            raise self._error
        self.stats.received += 1
        item = (time.perf_counter(), frame)
        if self.on_full == "block":
            self._in.put(item)
        else:
            try:
                self._in.put_nowait(item)
            except queue.Full:
                self.stats.dropped += 1
                return False
        self.stats.accepted += 1
        self.stats.max_queue_depth = max(self.stats.max_queue_depth, self._in.qsize())
        return True

    def close(self) -> None:
        """No more frames: the remaining windows are flushed and the output ends."""
        if not self._closed:
            self._closed = True
            self._in.put(_END)

    # ---- consumer side ------------------------------------------------------------------------------
    def results(self) -> Iterator[np.ndarray]:
        while True:
            item = self._out.get()
            if item is _END:
                break
            yield item
        self._worker.join()
        if self._error is not None:
            raise self._error

    def run(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Feed ``frames`` from a thread (as a camera would) and yield outputs in order."""
        def feed() -> None:
            try:
                for frame in frames:
                    if self._error is not None:
                        break
                    self.push(frame)
            finally:
                self.close()

        feeder = threading.Thread(target=feed, name="scopert-feeder", daemon=True)
        feeder.start()
        yield from self.results()
        feeder.join()

    def _emit(self, outputs: list[np.ndarray]) -> None:
        for out in outputs:
            pushed = self._push_times.popleft()
            self.stats.latencies.append(time.perf_counter() - pushed)
            self.stats.produced += 1
            self._out.put(out)

    def _work(self) -> None:
        try:
            while True:
                item = self._in.get()
                if item is _END:
                    self._emit(self.processor.flush())
                    break
                pushed, frame = item
                self._push_times.append(pushed)
                self._emit(self.processor.push(frame))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._error = exc
            # Unblock a producer waiting on a full queue.
            try:
                while True:
                    self._in.get_nowait()
            except queue.Empty:
                pass
        finally:
            self._out.put(_END)
