"""``load()`` and ``Model``: a model file plus its card, ready to restore whole arrays or live frames.

``Model.predict`` plans tiles, normalizes once per input, runs the threaded pipeline and stitches.
``Model.predict_to`` does the same into a slab sink (a file writer), so memory stays bounded by slabs.
``Model.stream`` / ``Model.open_stream`` serve acquisition code that pushes frames as they arrive.
Imports numpy, the runtime's own modules and (lazily) one backend; never torch or onnx.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from scopert.card import ModelCard, Normalization, TensorSpec, card_from_metadata, read_sidecar
from scopert.errors import CardError, ConfigError, InputError
from scopert.runtime.backends import open_backend
from scopert.runtime.io import check_array
from scopert.runtime.layout import (Layout, centre_frame_model, layouts, resolve_data_axes, shape_only,
                                   split_loop_axes, to_internal)
from scopert.runtime.normalize import AppliedNormalization, fit_normalization
from scopert.runtime.onnx_file import check_external_data
from scopert.runtime.pipeline import Inference, PipelineStats, run_pipeline
from scopert.runtime.stitch import ArraySink, BlendStitcher, CropStitcher, SlabSink
from scopert.runtime.tiling import TilePlan, plan_tiles, round_up

log = logging.getLogger(__name__)

STITCH_MODES = ("auto", "crop", "blend")


def load(path: str | Path, backend: str = "auto", device: str = "auto", *, axes: str | None = None,
         halo: dict[str, int] | None = None, divisor: dict[str, int] | None = None,
         scale: dict[str, float] | None = None, threads: int | None = None, precision: str = "f32",
         calibration: np.ndarray | None = None, gate_db: float = 45.0) -> "Model":
    """Open a model: an ONNX file with an embedded card, an ONNX file without one (then pass ``axes``,
    e.g. 'bczyx', and optionally halo/divisor/scale), or an engine with its sidecar card.

    ``precision='bf16'`` (OpenVINO, x86) is used only when the CPU reports bf16 and PSNR(bf16 vs f32) on
    real tiles of ``calibration`` (or a value recorded beside the model) is at least ``gate_db``;
    otherwise the run goes on in f32 and the log says why."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"model file {path} does not exist.")
    if path.suffix.lower() in (".zip", ".yaml", ".yml") or (path.is_dir() and any(
            (path / n).is_file() for n in ("rdf.yaml", "bioimageio.yaml"))):
        raise InputError(f"{path} is a bioimage.io package; import it first: `scopert import bioimageio {path} -o "
                         "engines/NAME.onnx`, then run the .onnx it writes.")
    if path.suffix not in (".onnx", ".engine", ".plan"):
        raise InputError(f"{path} is not a model file ScopeRT can run; pass an .onnx file (or a TensorRT .engine).")
    if path.suffix == ".onnx":
        with open(path, "rb") as fh:
            head = fh.read(16)
        if not head or head.lstrip()[:1] in (b"{", b"<") or head.startswith(b"II*") or head.startswith(b"MM\x00"):
            raise InputError(f"{path} is not an ONNX model (it looks like another file type). "
                             "Pass an ONNX file written by `scopert export`.")
        check_external_data(path)  # weights stored beside the model must stay in its folder
    engine = open_backend(path, backend=backend, device=device, threads=threads, precision=precision)
    card = read_sidecar(path) or card_from_metadata(engine.metadata, where=f"{path.name}:metadata")
    if card is None:
        card = _card_from_arguments(path, engine, axes, halo, divisor, scale)
    elif axes is not None and axes != card.input.axes:
        raise ConfigError(f"axes={axes!r} disagrees with the model's card ({card.input.axes!r}); drop the option.")
    model = Model(engine, card, path)
    # ---- precision (issue 7): bf16 only where the CPU has it and the accuracy gate passes --------------
    if precision != "f32":
        from scopert.runtime.bf16_gate import apply_precision

        apply_precision(model, precision, calibration, gate_db, threads)
    # the backend and precision decisions were logged once each where they were made
    log.debug("loaded %s (%s) on %s: %s", path.name, card.family, model.backend.info.name, model.backend.info.reason)
    return model


def _card_from_arguments(path, engine, axes, halo, divisor, scale) -> ModelCard:
    if axes is None:
        raise CardError(
            f"{path.name} has no ScopeRT card, so its axes are unknown. Pass them: --axes bczyx (3D), bcyx (2D) "
            "or btcyx (2D+t), or re-export the model with `scopert export`."
        )
    spatial = "".join(a for a in axes if a in "tzyx")
    card = ModelCard(
        family="unknown", name=path.stem,
        input=TensorSpec(engine.input_name, axes, divisor=dict(divisor or {}), scale={}),
        output=TensorSpec(engine.output_name, axes, scale=dict(scale or {})),
        halo={a: int((halo or {}).get(a, 0)) for a in spatial},
        tile_invariant=False, normalization=Normalization(kind="percentile", pmin=1.0, pmax=99.8),
        notes="card inferred from arguments (the ONNX file had none)",
    )
    card.validate(where="arguments")
    log.info("no card in %s: using axes=%s halo=%s divisor=%s scale=%s, percentile normalization 1/99.8, "
             "blend stitching", path.name, axes, card.halo, card.input.divisor, card.output.scale)
    return card


@dataclass
class RunPlan:
    """Everything decided before the first tile runs."""

    plan: TilePlan
    in_layout: Layout
    out_layout: Layout
    out_channels: int
    stitch: str
    batch: int
    window: str
    sums: bool = False  # blend: hand on the weighted sums and their weights (C + 1 channels), not their ratio


class Model:
    def __init__(self, backend, card: ModelCard, path: Path) -> None:
        self.backend = backend
        self.card = card
        self.path = path
        self.in_layout, self.out_layout = layouts(card)
        self.last_stats: PipelineStats | None = None
        self._last_plan: tuple[tuple, RunPlan] | None = None  # a run planned again (check, then run) is planned once
        self._voxel_bytes: int | None = None

    def __repr__(self) -> str:
        return f"Model({self.path.name!r}, family={self.card.family!r}, backend={self.backend.info.name!r})"

    def close(self) -> None:
        """Close the backend this model opened (GPU buffers, streams, sessions). Idempotent."""
        self.backend.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- planning ------------------------------------------------------------------------------------
    def _tiled_shape(self, internal: np.ndarray, layout: Layout) -> dict[str, int]:
        return dict(zip(layout.tiled, internal.shape[1:]))

    def default_tile(self, shape: dict[str, int], batch: int = 1, mode: str | None = None) -> dict[str, int]:
        """The tile a run over ``shape`` gets by default (``tile_choice``)."""
        return self.tile_choice(shape, batch, mode)[0]

    def tile_choice(self, shape: dict[str, int], batch: int = 1,
                    mode: str | None = None) -> tuple[dict[str, int], str]:
        """(tile, why). A backend with fixed shapes (a TensorRT engine: ``tile_range`` gives (min, opt, max) per
        axis) gets the tile it was built for, a graph built for one shape that shape, a 2D+t model's time axis its
        window; every other axis the size that computes the fewest voxels per voxel written within a memory
        budget (``tile_cost``), not the training patch."""
        from scopert.runtime.tile_cost import choose_tile, nominal_tile

        fixed = getattr(self.backend, "tile_range", None)
        ranges = fixed() if callable(fixed) else {}
        if ranges and all(ax in ranges for ax in shape):  # the engine's opt tile: every batch of it fits the profile
            return {ax: int(ranges[ax][1]) for ax in shape}, "the engine's optimization profile"
        pinned = {ax: int(ranges[ax][1]) for ax in shape if ax in ranges}
        pinned.update({ax: int(self.card.input.fixed[ax]) for ax in shape if ax in self.card.input.fixed})
        if "t" in shape and "t" not in pinned and self.card.input.time_window:
            pinned["t"] = nominal_tile(self.card, "t")
        if len(pinned) == len(shape):
            return pinned, "fixed by the model"
        mode = mode or ("crop" if self.card.tile_invariant else "blend")
        choice = choose_tile(shape, self.card.halo, self.card.input.divisor, mode, self._bytes_per_voxel(), batch,
                             pinned)
        return choice.tile, choice.why()

    def _bytes_per_voxel(self) -> int:
        """Activation bytes per tile voxel: the widest filter bank x 4 B x ``LIVE_BUFFERS`` (read once)."""
        if self._voxel_bytes is None:
            from scopert.runtime.onnx_file import widest_filter_bank
            from scopert.runtime.tile_cost import LIVE_BUFFERS

            channels = widest_filter_bank(self.path) if self.path.suffix == ".onnx" else 64
            self._voxel_bytes = 4 * LIVE_BUFFERS * max(channels, self.card.input.channels, self.card.output.channels)
        return self._voxel_bytes

    def _scales(self) -> dict[str, float]:
        out = dict(self.card.output.scale)
        return {ax: float(out.get(ax, 1.0)) for ax in self.in_layout.tiled}

    def make_plan(self, shape: dict[str, int], tile=None, overlap=None, stitch: str = "auto", batch: int | None = None,
                  window: str = "gaussian", loop: str = "") -> RunPlan:
        """Plan a run over ``shape`` (tiled axes, slowest first; loop axes first of all).

        ``tile`` and ``overlap`` name the model's own axes; loop axes (planes a 2D model runs over) get tiles
        of one plane and no halo, and several planes share a batch (default 4 tiles per call)."""
        key = (tuple(shape.items()), repr(tile), repr(overlap), stitch, batch, window, loop)
        if self._last_plan is not None and self._last_plan[0] == key:
            return self._last_plan[1]
        if stitch not in STITCH_MODES:
            raise ConfigError(f"stitch={stitch!r}; choose one of {', '.join(STITCH_MODES)}.")
        if stitch == "auto":
            stitch = "crop" if self.card.tile_invariant else "blend"
        if batch is not None and batch < 1:
            raise ConfigError(f"batch {batch}: give at least 1 tile per inference call.")
        own = {ax: n for ax, n in shape.items() if ax not in loop}
        if tile is None:
            tiles, why = self.tile_choice(own, batch or (4 if loop else 1), stitch)
            log.info("default tile %s", why)
        else:
            tiles = _per_axis(tile, own, "tile")
        fixed = self.card.input.fixed
        for ax, size in tiles.items():
            if ax in fixed and size != fixed[ax]:
                raise ConfigError(f"tile {size} on axis {ax!r}: this model's graph takes exactly {fixed[ax]} there "
                                  f"(a fixed input shape); drop -B or give {fixed[ax]}.")
        if "b" in fixed:
            if batch is not None and batch != fixed["b"]:
                raise ConfigError(f"--batch {batch}: this model's graph takes exactly {fixed['b']} tile(s) per call.")
            batch = fixed["b"]
        overlaps = None if overlap is None else _per_axis(overlap, own, "overlap")
        if loop:
            tiles = {**{ax: 1 for ax in loop}, **tiles}
            overlaps = None if overlaps is None else {**{ax: 0 for ax in loop}, **overlaps}
        plan = plan_tiles(shape, tiles, self.card.halo, self.card.input.divisor, self._scales(), stitch, overlaps,
                          fixed=set(fixed) & set(own))
        rp = RunPlan(plan, self.in_layout.with_loop(loop), self.out_layout.with_loop(loop),
                     self.card.output.channels, stitch, batch or (4 if loop else 1), window)
        self._last_plan = (key, rp)
        return rp

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

    def prepare(self, array: np.ndarray, axes: str | None = None, pmin: float | None = None,
                pmax: float | None = None, *, file_axes: str | None = None, check: bool = True,
                norm: AppliedNormalization | None = None) -> tuple[np.ndarray, str, AppliedNormalization]:
        """Check the input, resolve its axes, and fit the normalization once for the whole input.

        The internal array is ``(C, *loop, *tiled)`` (see ``layout``); ``split_loop_axes(data_axes, card)``
        names the loop axes. ``check=False`` skips the NaN/Inf scan for a caller that already ran it."""
        if check:
            check_array(array)
        data_axes = resolve_data_axes(array, self.card, axes, file_axes)
        loop, _ = split_loop_axes(data_axes, self.card)
        internal = to_internal(array, data_axes, self.in_layout.with_loop(loop))
        if internal.shape[0] != self.card.input.channels and "c" in self.card.input.axes:
            raise InputError(f"the input has {internal.shape[0]} channels; the model takes {self.card.input.channels}.")
        if norm is None:  # a given normalization (fitted on a whole volume) is kept, not refitted
            norm = fit_normalization(array, self.card.normalization, pmin, pmax)
        return internal, data_axes, norm

    def plan_for(self, internal, data_axes: str, tile=None, overlap=None, stitch: str = "auto",
                 batch: int | None = None, window: str = "gaussian") -> RunPlan:
        """The run plan for a prepared internal array (loop axes included)."""
        loop, _ = split_loop_axes(data_axes, self.card)
        shape = dict(zip(self.in_layout.with_loop(loop).all_tiled, internal.shape[1:]))
        return self.make_plan(shape, tile, overlap, stitch, batch, window, loop)

    def _check_time_window(self, internal) -> None:
        """A 2D+t model needs at least its time window of frames (the time axis is the last before y, x)."""
        if "t" in self.in_layout.tiled and self.card.input.time_window:
            frames = internal.shape[len(internal.shape) - len(self.in_layout.tiled) + self.in_layout.tiled.index("t")]
            if frames < self.card.input.time_window:
                raise InputError(f"the movie has {frames} frames, fewer than the model's time window of "
                                 f"{self.card.input.time_window}; give at least {self.card.input.time_window} frames.")

    def output_axes(self, data_axes: str) -> str:
        """The axes of ``predict``'s result: the input's, with 'c' kept where it was (or first if added)."""
        if self.card.output.channels == 1 and "c" not in data_axes:
            return data_axes
        return data_axes if "c" in data_axes else "c" + data_axes

    def output_shape(self, internal_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(C_out, *loop, *tiled) output sizes for an internal input shape (loop axes keep their size)."""
        scales = self._scales()
        tiled = internal_shape[len(internal_shape) - len(self.in_layout.tiled):]
        loop = internal_shape[1:len(internal_shape) - len(self.in_layout.tiled)]
        return (self.card.output.channels,) + tuple(loop) + tuple(
            int(round(n * scales[ax])) for ax, n in zip(self.in_layout.tiled, tiled))

    def predict(self, array: np.ndarray, tile=None, overlap=None, stitch: str = "auto", batch: int | None = None,
                *, axes: str | None = None, pmin: float | None = None, pmax: float | None = None,
                window: str = "gaussian", progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Restore a whole array (2D, 3D or 2D+t, with or without a channel axis) tile by tile."""
        if centre_frame_model(self.card):
            return self._predict_frames(array, tile, overlap, stitch, batch, axes, window, progress)
        internal, data_axes, norm = self.prepare(array, axes, pmin, pmax)
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

    def n_tiles(self, shape: tuple[int, ...], axes: str | None = None, tile=None, overlap=None,
                stitch: str = "auto") -> int:
        """How many tiles a run over an array of ``shape`` will take (for progress bars)."""
        dummy = shape_only(shape)
        data_axes = resolve_data_axes(dummy, self.card, axes)
        layout = self.in_layout
        if centre_frame_model(self.card):
            frames = shape[data_axes.index("t")]
            spatial = {a: shape[data_axes.index(a)] for a in layout.tiled}
            return frames * self.make_plan(spatial, tile, overlap, stitch).plan.n_tiles
        loop, _ = split_loop_axes(data_axes, self.card)
        internal = to_internal(dummy, data_axes, layout.with_loop(loop))
        return self.plan_for(internal, data_axes, tile, overlap, stitch).plan.n_tiles

    def _to_data_layout(self, out: np.ndarray, data_axes: str) -> np.ndarray:
        out_axes = self.output_axes(data_axes)
        internal_axes = "c" + split_loop_axes(data_axes, self.card)[0] + self.in_layout.tiled
        if "c" not in out_axes:
            return out[0]
        return np.transpose(out, [internal_axes.index(a) for a in out_axes])

    # ---- window-of-frames models (centre frame out) -----------------------------------------------------
    def frame_window(self, n_frames: int, i: int) -> list[int]:
        """Frame indices feeding output frame ``i``, mirrored at both ends of the movie as the seed does."""
        size = self.card.input.time_window or 1
        half = size // 2
        if n_frames < size:
            raise InputError(f"the movie has {n_frames} frames, fewer than the model's time window of {size}. "
                             f"Give at least {size} frames.")
        out = []
        for k in range(-half, size - half):
            if i < half:
                j = i + abs(k)
            elif i > n_frames - half - 1:
                j = i - abs(k)
            else:
                j = i + k
            out.append(j)
        return out

    def _normalize_frames(self, frames: np.ndarray) -> np.ndarray:
        spec = self.card.normalization
        if spec.per_frame:
            return np.stack([fit_normalization(f, spec)(np.asarray(f)) for f in frames])
        return fit_normalization(frames, spec)(np.asarray(frames))

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


def tile_input(internal, norm: AppliedNormalization, plan: TilePlan, tile) -> np.ndarray:
    """One tile's model input (C, *tile): read the part inside the image, normalize, reflect-pad the rest."""
    src, pads = [slice(None)], [(0, 0)]
    for ap, at in zip(plan.plans, tile.axes):
        lo, hi = max(0, at.start), min(ap.size, at.start + at.size)
        src.append(slice(lo, hi))
        pads.append((lo - at.start, at.start + at.size - hi))
    block = norm(np.asarray(internal[tuple(src)]))
    if any(p != (0, 0) for p in pads):  # numpy repeats a one-voxel axis under reflect, as whole-image inference
        block = np.pad(block, pads, mode="reflect")
    return block


def _per_axis(value, shape: dict[str, int], what: str) -> dict[str, int]:
    """Accept an int, a sequence in tiled-axis order, or a dict keyed by axis letter."""
    if isinstance(value, dict):
        missing = set(shape) - set(value)
        if missing:
            raise ConfigError(f"{what} is missing axes {sorted(missing)}; give all of {''.join(shape)}.")
        return {ax: int(value[ax]) for ax in shape}
    if isinstance(value, (int, np.integer)):
        return {ax: int(value) for ax in shape}
    value = list(value)
    if len(value) != len(shape):
        raise ConfigError(f"{what} {tuple(value)} has {len(value)} values, but the tiled axes are "
                          f"{''.join(shape)} ({len(shape)} values).")
    return {ax: int(v) for ax, v in zip(shape, value)}
