"""``Model``: a planned model with its opened backend, ready to restore whole arrays or live frames.

``Model.predict`` plans tiles (``planning.Planner``), normalizes once per input, runs the threaded pipeline and
stitches. ``Model.predict_to`` does the same into a slab sink (a file writer), so memory stays bounded by slabs.
``Model.stream`` / ``Model.open_stream`` serve acquisition code that pushes frames as they arrive. ``load()``
(``loader.py``) builds one. Imports numpy and the runtime's planning and leaves; the backend comes opened.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from scopert.card import ModelCard
from scopert.errors import CardError
from scopert.runtime.io import check_array
from scopert.runtime.layout import centre_frame_model, resolve_data_axes
from scopert.runtime.normalize import AppliedNormalization
from scopert.runtime.pipeline import Inference, PipelineStats, run_pipeline
from scopert.runtime.planning import STITCH_MODES, Planner, RunPlan, tile_input  # noqa: F401 - re-exported
from scopert.runtime.stitch import ArraySink, BlendStitcher, CropStitcher, SlabSink

log = logging.getLogger(__name__)

FOOTPRINT_VOXELS = 1 << 18  # the smaller of the two tiles a memory footprint is measured on


class Model(Planner):
    """A model's card and file (``Planner``), its opened backend, and the precision decided for it."""

    def __init__(self, backend: Any, card: ModelCard, path: Path, precision_decision: Any = None) -> None:
        super().__init__(card, path)
        self.backend = backend
        self.precision_decision = precision_decision
        self.last_stats: PipelineStats | None = None
        self._footprint: Any = None  # measured on first need; False: could not be

    def _engine_ranges(self) -> dict[str, tuple[int, int, int]]:
        fixed = getattr(self.backend, "tile_range", None)
        return fixed() if callable(fixed) else {}

    def footprint(self):
        """The opened CPU engine's memory per tile voxel, measured once in a fresh process on two tiles
        (``selection.footprint``; cached beside the model); None on a GPU engine, for INT8, or where it cannot be."""
        info = self.backend.info
        precision = {"fp32": "f32", "bf16": "bf16"}.get(info.precision)
        if info.device != "cpu" or precision is None:
            return None
        if self._footprint is None:
            from scopert.checksum import sha256_file
            from scopert.runtime.selection.footprint import CACHE_NAME, measured_footprint
            from scopert.runtime.selection.measured import cache_path, engine_versions

            tiles = [(self.nominal_batch(t).shape, int(np.prod(list(t.values()))))
                     for t in self.footprint_tiles(FOOTPRINT_VOXELS)]
            threads = int(getattr(self.backend, "threads", 0) or os.cpu_count() or 1)
            self._footprint = measured_footprint(self.path, info.name, precision, tiles, threads,
                                                 sha256_file(self.path), engine_versions(),
                                                 cache_path(self.path).with_name(CACHE_NAME)) or False
        return self._footprint or None

    def __repr__(self) -> str:
        return f"Model({self.path.name!r}, family={self.card.family!r}, backend={self.backend.info.name!r})"
    def close(self) -> None:
        """Close the backend this model opened (GPU buffers, streams, sessions). Idempotent."""
        self.backend.close()
    def __enter__(self) -> "Model":
        return self
    def __exit__(self, *exc: object) -> None:
        self.close()
    # ---- running -------------------------------------------------------------------------------------
    def run_plan(self, internal: np.ndarray, norm: AppliedNormalization, rp: RunPlan, sink: SlabSink,
                 progress: Callable[[int], None] | None = None) -> PipelineStats:
        """Run the tiles of a plan over a prepared array. A caller may bring tiles planned for a larger array
        (a block of a volume: ``scopert.scaleout``), so a block runs the single machine's tiles."""
        plan = rp.plan

        def read_tile(tile) -> np.ndarray:
            return tile_input(internal, norm, plan, tile)

        def make_stitcher(out_sink: SlabSink):
            if rp.stitch == "crop":
                return CropStitcher(plan, rp.out_channels, out_sink)
            return BlendStitcher(plan, rp.out_channels, out_sink, window=rp.window, sums=rp.sums)

        checked = {}

        def to_tiles(model_out: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
            out = rp.out_layout.from_model(model_out)
            if not checked:
                want = (rp.out_channels,) + tuple(int(round(n * ap.scale)) for n, ap in zip(in_shape[2:], plan.plans))
                if tuple(out.shape[1:]) != want:
                    raise CardError(
                        f"the model returned a tile of shape {tuple(out.shape[1:])} where the card promises {want} "
                        "(channels, then tiled axes). The card's output channels or scale are wrong; re-export."
                    )
                checked["ok"] = True
            return out

        in_flight = int(self.backend.max_in_flight)
        if in_flight > 1:  # a backend with several slots: keep them all busy (see pipeline.Inference)
            infer = Inference(lambda batch: (self.backend.submit(rp.in_layout.to_model(batch)), batch.shape),
                              lambda sent: to_tiles(self.backend.collect(sent[0]), sent[1]), in_flight)
        else:
            infer = Inference.blocking(
                lambda batch: to_tiles(self.backend.run(rp.in_layout.to_model(batch)), batch.shape))
        stats = run_pipeline(plan, read_tile, infer, make_stitcher, sink, batch=rp.batch, on_tile=progress)
        self.last_stats = stats
        return stats
    def predict(self, array: np.ndarray, tile=None, overlap=None, stitch: str = "auto", batch: int | None = None,
                *, axes: str | None = None, pmin: float | None = None, pmax: float | None = None,
                window: str = "gaussian", progress: Callable[[int], None] | None = None,
                norm: AppliedNormalization | None = None) -> np.ndarray:
        """Restore a whole array (2D, 3D or 2D+t, with or without a channel axis) tile by tile. ``norm``: the
        normalization already fitted on this array (a caller that also needs it is not made to fit it twice)."""
        if centre_frame_model(self.card):
            return self._predict_frames(array, tile, overlap, stitch, batch, axes, window, progress)
        internal, data_axes, norm = self.prepare(array, axes, pmin, pmax, norm=norm)
        self._check_time_window(internal)
        rp = self.plan_for(internal, data_axes, tile, overlap, stitch, batch, window)
        out = np.empty(self.output_shape(internal.shape), np.float32)
        self.run_plan(internal, norm, rp, ArraySink(out), progress)
        return self._to_data_layout(out, data_axes)
    def predict_to(self, array: np.ndarray, sink: SlabSink, tile=None, overlap=None, stitch: str = "auto",
                   batch: int | None = None, *, axes: str | None = None, pmin: float | None = None,
                   pmax: float | None = None, window: str = "gaussian",
                   progress: Callable[[int], None] | None = None,
                   norm: AppliedNormalization | None = None) -> PipelineStats:
        """Like ``predict`` but hands (C, n, ...) output slabs to ``sink`` as they complete (bounded memory).

        ``norm`` fixes the normalization (fitted once on a whole volume, e.g. by a client that splits it into
        blocks), so the result does not depend on which part of the volume ``array`` is."""
        internal, data_axes, norm = self.prepare(array, axes, pmin, pmax, norm=norm)
        self._check_time_window(internal)
        rp = self.plan_for(internal, data_axes, tile, overlap, stitch, batch, window)
        return self.run_plan(internal, norm, rp, sink, progress)
    def predict_window(self, window: np.ndarray, centre_raw: np.ndarray, tile=None, overlap=None,
                       stitch: str = "auto", batch: int | None = None, window_kind: str = "gaussian",
                       progress=None) -> np.ndarray:
        """Run one window of raw frames (T, y, x) and return the restored centre frame (y, x)."""
        normalized = self._normalize_frames(window)
        rp = self.make_plan(dict(zip(self.in_layout.tiled, normalized.shape[1:])), tile, overlap, stitch, batch,
                            window_kind)
        out = np.empty(self.output_shape(normalized.shape), np.float32)
        self.run_plan(normalized, AppliedNormalization(0.0, 1.0), rp, ArraySink(out), progress)
        frame = out[0]
        if self.card.postprocess.get("kind") == "minmax_to_centre_frame":
            lo, hi = float(frame.min()), float(frame.max())
            rlo, rhi = float(np.min(centre_raw)), float(np.max(centre_raw))
            frame = (frame - lo) / (hi - lo if hi > lo else 1.0) * (rhi - rlo) + rlo
        return frame.astype(np.float32)
    def _predict_frames(self, array, tile, overlap, stitch, batch, axes, window, progress) -> np.ndarray:
        check_array(array)
        data_axes = resolve_data_axes(array, self.card, axes)
        movie = np.transpose(array, [data_axes.index(a) for a in "t" + self.in_layout.tiled])
        n = movie.shape[0]
        outs = [self.predict_window(movie[self.frame_window(n, i)], movie[i], tile, overlap, stitch, batch, window,
                                    progress) for i in range(n)]
        return np.stack(outs)
    # ---- live acquisition --------------------------------------------------------------------------------
    def open_stream(self, on_full: str = "block", max_queue: int = 8, **predict_kwargs):
        """A stream that acquisition code ``push``es frames into and reads restored frames from, in order."""
        from scopert.runtime.stream import FrameStream, make_frame_processor

        return FrameStream(make_frame_processor(self, **predict_kwargs), on_full=on_full, max_queue=max_queue)
    def stream(self, frames: Iterable[np.ndarray], on_full: str = "block", max_queue: int = 8,
               **predict_kwargs) -> Iterator[np.ndarray]:
        """Yield restored outputs, in order, for frames (or volumes) from any iterable, e.g. a camera."""
        stream = self.open_stream(on_full=on_full, max_queue=max_queue, **predict_kwargs)
        self.last_stream = stream
        yield from stream.run(frames)
