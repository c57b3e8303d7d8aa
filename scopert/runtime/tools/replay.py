"""Acquisition replay: push a recorded 2D+t stack through ``Model.stream`` at a camera's frame rate.

A feeder thread offers frame i at ``start + i / fps``, as a camera would, into a ``FrameStream`` with
block or drop backpressure; the caller's thread takes outputs in order and writes each as it comes (a
TIFF opened once, one page per output, renamed into place at the end). The report says whether the run
kept up: every frame processed (no drop), the feeder never held back by more than one frame interval,
the queue never full and no backlog when the last frame arrived. Drops are exact:
received = processed + dropped. ``total`` longer than the movie loops it (frame i is movie[i % len]), so a
40-frame recording can feed an hour-long soak without a copy per pass. Imports numpy, tifffile and the
runtime; never torch or onnx.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scopert.errors import ConfigError, InputError, OutputError

log = logging.getLogger(__name__)

TIME_LETTERS = "t"


@dataclass
class ReplayReport:
    """What a replay measured."""

    frames: int
    fps: float
    on_full: str
    received: int
    processed: int
    dropped: int
    produced: int
    latency_p50_s: float
    latency_p99_s: float
    max_queue_depth: int
    max_queue: int
    max_lateness_s: float  # how far behind schedule the feeder fell (block mode holds it back)
    backlog_at_end: int  # accepted frames not yet processed when the last frame was offered
    wall_s: float
    output_fps: float
    kept_up: bool
    verdict: str
    output: str | None = None
    movie_frames: int = 0  # frames in the recording; fewer than ``frames`` when it was looped
    # p99 latency of the first, middle and last third of the outputs: a run that slows down shows it here
    latency_p99_thirds_s: list[float] | None = None
    dropped_frames: list[int] | None = None  # indices (in the offered sequence) of the frames that were dropped

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_rate(fps: float) -> float:
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise ConfigError(f"--fps {fps!r} is not a number; give frames per second, e.g. --fps 10.") from None
    if not np.isfinite(fps) or fps <= 0:
        raise ConfigError(f"--fps {fps:g} is not a frame rate; give a positive number of frames per second, "
                          "e.g. --fps 10.")
    return fps


def check_replay_layout(path: str | Path, shape: tuple[int, ...], axes: str | None, source_axes: str | None) -> None:
    """InputError unless a file of this shape and these axes is a (t, y, x) movie; reads no pixels."""
    name = Path(path).name
    axes = axes or "?" * len(shape)
    if len(shape) != 3:
        raise InputError(f"{name} has {len(shape)} axes ({axes}, shape {shape}); a replay needs a 2D+t stack "
                         "(t, y, x): a movie of single-channel 2D frames. Save it as an ImageJ TIFF with axes TYX.")
    stated = (source_axes or "").upper()
    if axes[0] != "t" and (stated[:1] not in ("Q", "I", "T") or "Z" in stated or "C" in stated or "S" in stated):
        raise InputError(f"{name} has axes {axes} (shape {shape}); a replay needs time first then y, x (tyx). "
                         f"A {axes} stack is not a movie: pass a 2D+t recording, or re-save it with axes TYX.")
    if shape[0] < 1:
        raise InputError(f"{name} holds no frames.")


def read_replay_stack(path: str | Path) -> np.ndarray:
    """A (t, y, x) stack from a file whose axes are time then two image axes; anything else is an error."""
    from scopert.runtime.io import read_image

    path = Path(path)
    if not path.exists():
        raise InputError(f"replay file {path} does not exist.")
    with read_image(path) as img:
        check_replay_layout(path, img.shape, img.axes, img.source_axes)
        # A copy in memory, read once: a memmap would die with SIGBUS if the file were cut mid-replay, and disk
        # reads during the replay would distort the camera timing.
        frames = np.array(img.array)
    if frames.shape[0] < 1:
        raise InputError(f"{path.name} holds no frames.")
    return frames


class _PageWriter:
    """Writes outputs as they come, one TIFF page each, as one time series (axes T, Y, X; T, C, Y, X for several
    output channels) with the frame interval and pixel size, under a temporary name renamed at the end.

    A failed run (an error, Ctrl-C, a full disk) deletes the temporary, so nothing is left under either name.
    """

    def __init__(self, dest: Path, physical: Any = None) -> None:
        import tifffile

        from scopert.runtime.io.atomic import partial_path, remove_stale_partials

        self.dest = Path(dest)
        self.tmp = partial_path(self.dest)
        remove_stale_partials(self.dest)
        self.tif = tifffile.TiffWriter(self.tmp, bigtiff=True)
        # the same tags on every page (or tifffile starts a new series): ScopeRT's sizes in the description, and
        # the pixel size as resolution tags in centimetres for every other reader
        self._meta: dict[str, Any] = {"physical_sizes": physical.to_dict()} if physical else {}
        x, y = (physical.get("x", "centimeter"), physical.get("y", "centimeter")) if physical else (None, None)
        self._kw: dict[str, Any] = {"resolution": (1.0 / x, 1.0 / y), "resolutionunit": "CENTIMETER"} if x and y else {}
        self.count = 0
        self._held: np.ndarray | None = None

    def _failure(self, exc: OSError) -> Exception:
        from scopert.runtime.io.atomic import DiskFullError, disk_full_cause, disk_full_message

        full = disk_full_cause(exc)
        if full is not None:
            return DiskFullError(disk_full_message(self.dest, full))
        return OutputError(f"writing {self.dest} failed ({exc}); check the folder's permissions and free space")

    def write(self, frame: np.ndarray) -> None:
        # The first frame waits for the second: tifffile's series of one contiguous 2D page has no T axis, so a
        # run that restored one frame writes it as (1, y, x) at close instead.
        frame = np.asarray(frame, np.float32)
        if self.count == 0 and self._held is None:
            self._held = frame
            return
        if self._held is not None:
            held, self._held = self._held, None
            self._write(held)
        self._write(frame)

    def _write(self, frame: np.ndarray, single: bool = False) -> None:
        axes = "T" + ("CYX" if frame.ndim - single == 3 else "YX")
        try:
            self.tif.write(frame, contiguous=True, metadata={"axes": axes, **self._meta}, **self._kw)
        except OSError as exc:
            raise self._failure(exc) from exc
        self.count += 1

    def close(self, ok: bool) -> None:
        try:
            if ok and self._held is not None:
                self._write(self._held[None], single=True)
            self.tif.close()
        except OSError as exc:
            self.tmp.unlink(missing_ok=True)
            if ok:
                raise self._failure(exc) from exc
            return  # the run failed already: its own error is the one to report
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        if ok:
            self.tmp.replace(self.dest)
        else:
            self.tmp.unlink(missing_ok=True)


def latency_thirds(latencies: list[float], q: float = 99) -> list[float]:
    """The ``q``-th latency percentile of the first, middle and last third of the outputs (NaN when empty)."""
    parts = np.array_split(np.asarray(latencies, float), 3)
    return [float(np.percentile(p, q)) if p.size else float("nan") for p in parts]


def _drain(stream) -> None:
    """Wait until the stream's worker has finished the few frames it still holds (the feeder has closed the
    stream, so it ends; its output queue is unbounded, so it cannot block). A backend whose worker thread is still
    inside a run when the interpreter exits aborts the process ("terminate called without an active exception")
    after the clean Ctrl-C message. FrameStream has no public join, hence its ``_worker``."""
    worker = getattr(stream, "_worker", None)
    if worker is not None:
        worker.join()


def replay(model, frames: np.ndarray, fps: float, on_full: str = "drop", max_queue: int = 4,
           output: str | Path | None = None, on_output: Callable[[np.ndarray], None] | None = None,
           total: int | None = None, physical: Any = None, **predict_kwargs) -> ReplayReport:
    """Replay ``frames`` (t, y, x) at ``fps`` through ``model.open_stream`` and report the keep-up verdict.

    ``total`` frames are offered (default: the movie once); more than the movie holds loops it. ``physical``
    (PhysicalSizes of the output frames) goes into the output's metadata, with the replayed frame interval."""
    fps = check_rate(fps)
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise InputError(f"replay frames must be (t, y, x); got shape {frames.shape}.")
    total = len(frames) if total is None else int(total)
    if total < 1:
        raise ConfigError(f"--frames {total}: replay at least one frame.")
    stream = model.open_stream(on_full=on_full, max_queue=max_queue, **predict_kwargs)
    interval = 1.0 / fps
    if output is not None:
        from scopert.runtime.io.physical import PhysicalSizes

        given = physical or PhysicalSizes()  # the movie's frame interval, else the replayed camera's
        physical = PhysicalSizes({"t": interval, **given.sizes}, {"t": "second", **given.units})
    writer = _PageWriter(Path(output), physical) if output is not None else None
    feed_state = {"lateness": 0.0, "backlog": 0}
    dropped_at: list[int] = []
    stop = threading.Event()  # set when the consumer fails (an error or Ctrl-C): the camera side stops at once
    start = time.perf_counter()

    def feed() -> None:
        try:
            for i in range(total):
                frame = frames[i % len(frames)]
                due = start + i * interval
                now = time.perf_counter()
                if (due > now and stop.wait(due - now)) or stop.is_set():
                    break
                feed_state["lateness"] = max(feed_state["lateness"], time.perf_counter() - due)
                if not stream.push(frame):
                    dropped_at.append(i)
            feed_state["backlog"] = stream.stats.accepted - stream.stats.produced
        except BaseException:  # noqa: BLE001 - the stream's error reaches the consumer
            pass
        finally:
            stream.close()

    feeder = threading.Thread(target=feed, name="scopert-replay", daemon=True)
    ok = False
    try:
        feeder.start()
        for out in stream.results():
            if writer is not None:
                writer.write(out)
            if on_output is not None:
                on_output(out)
        ok = True
    finally:
        stop.set()
        feeder.join()
        if not ok:
            _drain(stream)
        if writer is not None:
            writer.close(ok)
    wall = time.perf_counter() - start
    st = stream.stats
    processed = st.accepted
    lateness = feed_state["lateness"]
    backlog = feed_state["backlog"]
    reasons = []
    if st.dropped:
        reasons.append(f"{st.dropped} of {st.received} frames dropped")
    if lateness > interval:
        reasons.append(f"the camera side was held back {lateness * 1e3:.0f} ms (> one frame, {interval * 1e3:.0f} ms)")
    if st.max_queue_depth >= max_queue:
        reasons.append(f"the queue filled ({st.max_queue_depth}/{max_queue})")
    if backlog > 2:
        reasons.append(f"{backlog} frames were still waiting when the last one arrived")
    kept_up = not reasons
    p50, p99 = st.latency_percentile(50), st.latency_percentile(99)
    verdict = (f"kept up at {fps:g} fps: {st.received} frames, none dropped, latency p50 {p50 * 1e3:.0f} ms / "
               f"p99 {p99 * 1e3:.0f} ms" if kept_up else f"did NOT keep up at {fps:g} fps: " + "; ".join(reasons))
    report = ReplayReport(
        frames=total, fps=fps, on_full=on_full, received=st.received, processed=processed, dropped=st.dropped,
        produced=st.produced, latency_p50_s=p50, latency_p99_s=p99, max_queue_depth=st.max_queue_depth,
        max_queue=max_queue, max_lateness_s=lateness, backlog_at_end=backlog, wall_s=wall,
        output_fps=st.produced / wall if wall else 0.0, kept_up=kept_up, verdict=verdict,
        output=str(output) if output is not None else None, movie_frames=len(frames),
        latency_p99_thirds_s=latency_thirds(st.latencies), dropped_frames=dropped_at,
    )
    log.info("replay: %s", verdict)
    return report
