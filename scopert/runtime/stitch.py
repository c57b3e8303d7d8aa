"""Stitching tile outputs into slabs along the slowest tiled axis, with bounded memory.

Arrays here have a leading channel axis followed by the tiled axes: ``(C, a0, a1, ...)``. A stitcher
receives tile outputs row by row (a row = all tiles at one index of the slowest axis) and hands each
completed slab of the output to a sink as soon as no later tile can touch it. Only the current slab
(crop) or the rows still open (blend) are held in memory, never the whole volume.

Imports only numpy.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from scopert.runtime.tiling import AxisTile, Tile, TilePlan


class SlabSink(Protocol):
    def write(self, slab: np.ndarray, start: int) -> None:
        """Receive output ``slab`` (C, n, ...) that starts at ``start`` along the slowest tiled axis."""


def _out(value: int, scale: float) -> int:
    return int(round(value * scale))


def _tile_region(plan: TilePlan, tile: Tile, crop: bool) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices into the tile output and into the full output for the part this tile writes."""
    src, dst = [], []
    for ap, at in zip(plan.plans, tile.axes):
        if crop:
            lo, hi = at.write_start, at.write_stop
        else:  # the halo is never valid context for its own voxels: blend only the window's inner part
            lo, hi = max(0, at.start + ap.halo), min(ap.size, at.start + at.size - ap.halo)
        o_lo, o_hi = _out(lo, ap.scale), _out(hi, ap.scale)
        off = _out(lo - at.start, ap.scale)
        src.append(slice(off, off + o_hi - o_lo))
        dst.append(slice(o_lo, o_hi))
    return tuple(src), tuple(dst)


class CropStitcher:
    """Discard the halo and write every output voxel exactly once; no weights, no accumulation."""

    def __init__(self, plan: TilePlan, channels: int, sink: SlabSink, dtype=np.float32) -> None:
        self.plan, self.channels, self.sink, self.dtype = plan, channels, sink, dtype
        self._others = tuple(p.out_size for p in plan.plans[1:])
        self._slab: np.ndarray | None = None
        self._slab_start = 0

    def add(self, tile: Tile, output: np.ndarray) -> None:
        src, dst = _tile_region(self.plan, tile, crop=True)
        if self._slab is None:
            self._slab_start = dst[0].start
            self._slab = np.empty((self.channels, dst[0].stop - dst[0].start) + self._others, self.dtype)
        local = (slice(None), slice(dst[0].start - self._slab_start, dst[0].stop - self._slab_start)) + dst[1:]
        self._slab[local] = output[(slice(None),) + src]

    def end_row(self) -> None:
        if self._slab is not None:
            self.sink.write(self._slab, self._slab_start)
        self._slab = None

    def finish(self) -> None:
        self.end_row()


def window_1d(at: AxisTile, size_out: int, kind: str, floor: float = 1e-3) -> np.ndarray:
    """Blend weight along one axis: a Gaussian (sigma = tile/8) or cosine bump, flat towards true borders."""
    pos = np.arange(size_out, dtype=np.float64) + 0.5
    centre = size_out / 2.0
    if kind == "gaussian":
        w = np.exp(-0.5 * ((pos - centre) / (size_out / 8.0)) ** 2)
    elif kind == "cosine":
        w = np.sin(np.pi * pos / size_out) ** 2
    else:
        raise ValueError(f"unknown blend window {kind!r}")
    w = w / w.max()
    half = size_out // 2
    if at.at_low_border:
        w[:half] = 1.0
    if at.at_high_border:
        w[half:] = 1.0
    return np.maximum(w, floor).astype(np.float32)


class BlendStitcher:
    """Weighted average of overlapping tile outputs; completed slabs are normalized and flushed."""

    def __init__(self, plan: TilePlan, channels: int, sink: SlabSink, window: str = "gaussian",
                 sums: bool = False) -> None:
        """``sums``: hand on the weighted sums with the weights as a last channel instead of their ratio (a block
        of a distributed volume, whose neighbours add their own sums before the division)."""
        self.plan, self.channels, self.sink, self.window, self.sums = plan, channels, sink, window, sums
        self._others = tuple(p.out_size for p in plan.plans[1:])
        self._acc = np.zeros((channels, 0) + self._others, np.float32)
        self._wsum = np.zeros((0,) + self._others, np.float32)
        self._lo = 0  # output index of acc[:, 0]
        self._rows = [r for r, _ in plan.rows()]
        self._row_pos = 0

    def _ensure(self, stop: int) -> None:
        have = self._lo + self._acc.shape[1]
        if stop > have:
            extra = stop - have
            self._acc = np.concatenate([self._acc, np.zeros((self.channels, extra) + self._others, np.float32)], 1)
            self._wsum = np.concatenate([self._wsum, np.zeros((extra,) + self._others, np.float32)], 0)

    def add(self, tile: Tile, output: np.ndarray) -> None:
        src, dst = _tile_region(self.plan, tile, crop=False)
        weight = None
        for ap, at, s in zip(self.plan.plans, tile.axes, src):
            w = window_1d(at, _out(at.size - 2 * ap.halo, ap.scale), self.window)
            w = np.pad(w, _out(ap.halo, ap.scale), mode="edge")[s]
            weight = w if weight is None else np.multiply.outer(weight, w)
        self._ensure(dst[0].stop)
        local = (slice(dst[0].start - self._lo, dst[0].stop - self._lo),) + dst[1:]
        self._acc[(slice(None),) + local] += output[(slice(None),) + src] * weight
        self._wsum[local] += weight

    def end_row(self) -> None:
        """Flush what no later row can reach: everything before the next row's first window."""
        self._row_pos += 1
        plan0 = self.plan.plans[0]
        if self._row_pos < len(plan0.tiles):
            done = _out(max(0, plan0.tiles[self._row_pos].start + plan0.halo), plan0.scale)
        else:
            done = plan0.out_size
        n = done - self._lo
        if n <= 0:
            return
        self._ensure(done)
        if self.sums:
            slab = np.concatenate([self._acc[:, :n], self._wsum[None, :n]])
        else:
            slab = self._acc[:, :n] / self._wsum[None, :n]
        self.sink.write(slab, self._lo)
        self._acc = self._acc[:, n:].copy()
        self._wsum = self._wsum[n:].copy()
        self._lo = done

    def finish(self) -> None:
        while self._row_pos < len(self.plan.plans[0].tiles):
            self.end_row()


class ArraySink:
    """Collects slabs into one in-memory (or memory-mapped) array of shape (C, a0, a1, ...)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def write(self, slab: np.ndarray, start: int) -> None:
        self.array[:, start:start + slab.shape[1]] = slab
