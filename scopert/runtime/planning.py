"""Planning from the card alone: how an input becomes tiles, before any engine is opened.

``Planner`` holds a model's card and file and answers every question a run asks before its first tile: the input's
axes and channels (``prepare``), the default tile (the fewest voxels computed per voxel written within memory,
``tile_cost``), the tile plan and stitching (``make_plan`` / ``plan_for`` -> ``RunPlan``), the output's shape
and axes, a 2D+t model's time window, and the tiles a measurement runs on (``nominal_batch`` for the engine
choice, ``sample_tiles`` for the precision gate). ``Model`` (``model.py``) is a Planner with an opened backend.
Imports numpy and the runtime's leaves only; never an engine, torch or onnx.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scopert.card import ModelCard
from scopert.errors import ConfigError, InputError
from scopert.runtime.io import check_array
from scopert.runtime.layout import (Layout, centre_frame_model, layouts, resolve_data_axes, shape_only,
                                   split_loop_axes, to_internal)
from scopert.runtime.normalize import AppliedNormalization, fit_normalization
from scopert.runtime.tile_cost import nominal_tile
from scopert.runtime.tiling import TilePlan, plan_tiles, round_up

log = logging.getLogger(__name__)

STITCH_MODES = ("auto", "crop", "blend")
PROBE_VOXELS = 1 << 18  # a measured engine-choice tile at most (e.g. 16x128x128, 512x512)


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


class Planner:
    """A model's card and file, and every planning decision that follows from them."""

    def __init__(self, card: ModelCard, path: Path) -> None:
        self.card = card
        self.path = Path(path)
        self.in_layout, self.out_layout = layouts(card)
        self._last_plan: tuple[tuple, RunPlan] | None = None  # a run planned again (check, then run) is planned once
        self._voxel_bytes: int | None = None

    def _engine_ranges(self) -> dict[str, tuple[int, int, int]]:
        """(min, opt, max) per axis of an engine built for fixed shapes; none before an engine is open."""
        return {}

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
        from scopert.runtime.tile_cost import MEMORY_SHARE, available_memory, choose_tile, nominal_tile

        ranges = self._engine_ranges()
        if ranges and all(ax in ranges for ax in shape):  # the engine's opt tile: every batch of it fits the profile
            return {ax: int(ranges[ax][1]) for ax in shape}, "the engine's optimization profile"
        pinned = {ax: int(ranges[ax][1]) for ax in shape if ax in ranges}
        pinned.update({ax: int(self.card.input.fixed[ax]) for ax in shape if ax in self.card.input.fixed})
        if "t" in shape and "t" not in pinned and self.card.input.time_window:
            pinned["t"] = nominal_tile(self.card, "t")
        if len(pinned) == len(shape):
            return pinned, "fixed by the model"
        mode = mode or ("crop" if self.card.tile_invariant else "blend")
        halo, divisor = self.card.halo, self.card.input.divisor
        choice = choose_tile(shape, halo, divisor, mode, self._bytes_per_voxel(), batch, pinned)
        footprint = self.footprint() if choice.bound else None  # the estimate bounds the tile: measure the engine
        if footprint is not None:
            budget = int(MEMORY_SHARE * available_memory()) - footprint.fixed_bytes
            choice = choose_tile(shape, halo, divisor, mode, footprint.bytes_per_voxel, batch, pinned, budget,
                                 footprint.basis)
        return choice.tile, choice.why()
    def footprint(self):
        """The engine's measured memory per tile voxel (``Model``: its opened engine); none before one is open."""
        return None
    def _bytes_per_voxel(self) -> int:
        """Activation bytes per tile voxel x ``LIVE_BUFFERS``: the largest activation per input voxel the export
        recorded (shape inference), else the widest filter bank x 4 B (read once)."""
        if self._voxel_bytes is None:
            from scopert.runtime.onnx_file import widest_filter_bank
            from scopert.runtime.tile_cost import LIVE_BUFFERS

            recorded = ((self.card.verification or {}).get("activations") or {}).get("largest_bytes_per_voxel")
            if isinstance(recorded, (int, float)) and recorded > 0:
                self._voxel_bytes = LIVE_BUFFERS * int(recorded)
            else:
                channels = widest_filter_bank(self.path) if self.path.suffix == ".onnx" else 64
                self._voxel_bytes = 4 * LIVE_BUFFERS * max(channels, self.card.input.channels,
                                                           self.card.output.channels)
        return self._voxel_bytes
    def _scales(self) -> dict[str, float]:
        out = dict(self.card.output.scale)
        return {ax: float(out.get(ax, 1.0)) for ax in self.in_layout.tiled}
    def make_plan(self, shape: dict[str, int], tile=None, overlap=None, stitch: str = "auto", batch: int | None = None,
                  window: str = "gaussian", loop: str = "", *, quiet: bool = False) -> RunPlan:
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
            (log.debug if quiet else log.info)("default tile %s", why)  # quiet: a measurement's tiles, not the run's
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
                 batch: int | None = None, window: str = "gaussian", *, quiet: bool = False) -> RunPlan:
        """The run plan for a prepared internal array (loop axes included)."""
        loop, _ = split_loop_axes(data_axes, self.card)
        shape = dict(zip(self.in_layout.with_loop(loop).all_tiled, internal.shape[1:]))
        return self.make_plan(shape, tile, overlap, stitch, batch, window, loop, quiet=quiet)
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

    # ---- tiles for measurements ----------------------------------------------------------------------------
    def nominal_batch(self, tile: dict[str, int] | None = None) -> np.ndarray:
        """One nominal tile (``nominal_probe_tile``, or ``tile``) of random values in the model's layout: the
        engines are compared on a tile of a typical run's size, the same for every input, so the measurement is
        cached once per model."""
        tile = tile or self.nominal_probe_tile()
        card = self.card
        # the model's channel axis: its channels, or the frame window of a 'btyx' model whose frames are its channels
        channels = (card.input.time_window or 1) if self.in_layout.channel == "t" else (
            card.input.channels if "c" in card.input.axes else 1)
        shape = (1, channels) + tuple(tile[ax] for ax in self.in_layout.tiled)
        return self.in_layout.to_model(np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32))

    def nominal_probe_tile(self, voxels: int | None = None) -> dict[str, int]:
        """The card's tile (or 32 along z and 256 along y/x, at least 4x the halo) shrunk to ``PROBE_VOXELS``.
        ``voxels``: about that many instead (within 2x), the halo ignored: a tile for a memory measurement."""
        card = self.card
        tile = {ax: round_up(int(card.input.fixed[ax]), card.input.divisor.get(ax, 1)) if ax in card.input.fixed
                else nominal_tile(card, ax) for ax in self.in_layout.tiled}
        window = "t" if card.input.time_window else ""  # a 2D+t model's time axis keeps its window
        floor = {ax: (tile[ax] if ax == window else (0 if voxels else 4 * card.halo.get(ax, 0))
                      + card.input.divisor.get(ax, 1)) for ax in tile}
        tile = probe_tile(tile, floor, card.input.divisor, voxels or PROBE_VOXELS)
        free = self._resizable_axes()
        while voxels and free and 2 * int(np.prod(list(tile.values()))) <= voxels:
            tile = self._doubled(tile, free)
        return tile

    def footprint_tiles(self, voxels: int) -> list[dict[str, int]]:
        """Two tiles for a memory measurement: about ``voxels``, and the same with one axis doubled (only the first
        where the graph fixes every axis)."""
        small, free = self.nominal_probe_tile(voxels), self._resizable_axes()
        return [small, self._doubled(small, free)] if free else [small]

    def _resizable_axes(self) -> list[str]:
        """Tiled axes a probe tile may resize: not a 2D+t model's time window, not a size the graph fixes."""
        card = self.card
        window = "t" if card.input.time_window else ""
        return [ax for ax in self.in_layout.tiled if ax != window and ax not in card.input.fixed]

    def _doubled(self, tile: dict[str, int], free: list[str]) -> dict[str, int]:
        ax = min(free, key=lambda a: tile[a])
        return dict(tile, **{ax: round_up(2 * tile[ax], self.card.input.divisor.get(ax, 1))})

    def sample_tiles(self, array: np.ndarray, n: int = 4, tile=None, axes: str | None = None) -> list[np.ndarray]:
        """Up to ``n`` normalized, model-layout tiles (1, C, ...) of a real ``array``, spread over it (for a model
        that restores the centre frame of a window: tiles of windows spread over the movie)."""
        if centre_frame_model(self.card):
            return self._window_tiles(array, n, tile, axes)
        internal, data_axes, norm = self.prepare(array, axes)
        rp = self.plan_for(internal, data_axes, tile, None, "auto", 1, quiet=True)  # a stack under a 2D model: planes
        tiles = list(rp.plan)
        pick = [tiles[int(i)] for i in np.linspace(0, len(tiles) - 1, min(n, len(tiles)))]
        return [rp.in_layout.to_model(tile_input(internal, norm, rp.plan, t)[None]).astype(np.float32) for t in pick]

    def _window_tiles(self, array: np.ndarray, n: int, tile, axes: str | None) -> list[np.ndarray]:
        data_axes = resolve_data_axes(array, self.card, axes)
        movie = np.transpose(array, [data_axes.index(a) for a in "t" + self.in_layout.tiled])
        out = []
        for i in np.linspace(0, movie.shape[0] - 1, min(n, movie.shape[0])).astype(int):
            window = self._normalize_frames(movie[self.frame_window(movie.shape[0], int(i))])
            rp = self.make_plan(dict(zip(self.in_layout.tiled, window.shape[1:])), tile, None, "auto", 1, quiet=True)
            first = next(iter(rp.plan))
            out.append(rp.in_layout.to_model(tile_input(window, AppliedNormalization(0.0, 1.0), rp.plan, first)[None])
                       .astype(np.float32))
        return out


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


def probe_tile(tile: dict[str, int], floor: dict[str, int], divisor: dict[str, int],
               limit: int = PROBE_VOXELS) -> dict[str, int]:
    """``tile`` shrunk to at most ``limit`` voxels by halving its largest axis, each axis kept a multiple of its
    divisor and at least ``floor`` (the smallest tile the halo allows)."""
    tile = dict(tile)

    def halved(ax: str) -> int:
        return round_up(max(tile[ax] // 2, floor.get(ax, 1)), divisor.get(ax, 1))

    while int(np.prod(list(tile.values()))) > limit:
        shrinkable = [ax for ax in tile if halved(ax) < tile[ax]]
        if not shrinkable:
            break
        ax = max(shrinkable, key=lambda a: tile[a])
        tile[ax] = halved(ax)
    return tile


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
