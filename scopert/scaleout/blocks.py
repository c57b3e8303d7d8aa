"""Blocks of one volume for distributed runs: groups of the volume's global tiles, each writing its own core.

The client plans the tiles once over the whole volume (the same ``TilePlan`` a single-machine run makes), so a
tile-variant model (one that normalizes over its tile) sees the single machine's windows whatever the block
layout. Block cores partition the volume on a regular grid (the last core per axis is ragged), and the output
chunks divide the blocks (``output_chunks``): each block writes whole chunks of its own, without locks.

- crop: a block runs the global tiles whose written part meets its core, on the union of their windows. A tile
  that straddles a block boundary runs in both blocks (``redundant_fraction``); default blocks are whole tiles.
- blend: each tile is owned by the block that holds the middle of its blended (inner) part, and only its owner
  runs it (no tile runs twice). The owner blends its tiles into weighted sums over their reach (``Sums``):
  where no other block's tile reaches (the interior) the sums are final; the rim is finished in a second pass
  that adds the neighbours' sums (``tasks.run_rim``).

Axes are the planner's tiled axes, loop axes first (a 2D model's z/t planes: one plane per tile). Ranges in
``Block`` are input voxels except ``out`` and ``Sums``, which are output voxels.
Imports the standard library, scopert.errors and the runtime's tiling.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Iterator

from scopert.errors import ConfigError
from scopert.runtime.tiling import AxisPlan, AxisTile, TilePlan

DEFAULT_BLOCK = {"y": 512, "x": 512}
DEFAULT_DEPTH = 64  # z, or t of a 2D+t model, or a loop axis
MAX_REDUNDANT = 0.5  # a --block that runs each tile 1.5x or more on average is refused


@dataclass(frozen=True)
class Block:
    """One block: its grid index, the input range it reads, its core (input voxels), its output range, and
    its tiles (the global tiles it runs, placed in the coordinates of its read range)."""

    index: tuple[int, ...]
    read: tuple[tuple[int, int], ...]
    core: tuple[tuple[int, int], ...]
    out: tuple[tuple[int, int], ...]
    tiles: TilePlan | None = None  # None: no tile of its own (blend: all its core comes from neighbours)
    sums: "Sums | None" = None  # blend only

    @property
    def name(self) -> str:
        return "-".join(str(i) for i in self.index)


Range = tuple[int, int]
Box = tuple[Range, ...]


@dataclass(frozen=True)
class Sums:
    """Blend: where a block's own tiles reach (``extent``), the part of its core no other block's tile reaches
    (``interior``, final after the first pass), and the blocks whose reach meets its core (``sources``: name,
    extent, interior), whose sums the second pass adds. Output voxels."""

    extent: Box
    interior: Box
    sources: tuple[tuple[str, Box, Box], ...] = ()


def box_minus(outer: Box, inner: Box) -> list[Box]:
    """``outer`` less ``inner`` (inside it, or empty) as at most 2 boxes per axis, disjoint."""
    if any(hi <= lo for lo, hi in inner):
        return [outer] if all(hi > lo for lo, hi in outer) else []
    pieces, prefix = [], []
    for k, ((o_lo, o_hi), (i_lo, i_hi)) in enumerate(zip(outer, inner)):
        for lo, hi in ((o_lo, i_lo), (i_hi, o_hi)):
            if hi > lo:
                pieces.append(tuple(prefix) + ((lo, hi),) + tuple(outer[k + 1:]))
        prefix.append((i_lo, i_hi))
    return pieces


def intersect(a: Box, b: Box) -> Box | None:
    box = tuple((max(x0, y0), min(x1, y1)) for (x0, x1), (y0, y1) in zip(a, b))
    return box if all(hi > lo for lo, hi in box) else None


def _inner(ap: AxisPlan, t: AxisTile) -> Range:
    """The part of a tile's window that is blended (inside its halo), clipped to the image: input voxels."""
    return max(0, t.start + ap.halo), min(ap.size, t.start + t.size - ap.halo)


def _writes_into(t: AxisTile, lo: int, hi: int) -> bool:
    """Crop: does tile ``t`` write into [lo, hi)?"""
    return t.write_start < hi and lo < t.write_stop


def _integral_start(lo: int, scale: float) -> int:
    """The read start moved down (never below 0) until it maps to a whole output voxel."""
    while lo > 0 and abs(lo * scale - round(lo * scale)) > 1e-9:
        lo -= 1
    return lo


def _local_axis(ap: AxisPlan, chosen: list[AxisTile]) -> tuple[AxisPlan | None, Range]:
    """``chosen`` tiles shifted to their read range (the union of their windows in the image)."""
    if not chosen:
        return None, (0, 0)
    r_lo = _integral_start(max(0, min(t.start for t in chosen)), ap.scale)
    r_hi = min(ap.size, max(t.start + t.size for t in chosen))
    local = tuple(replace(t, start=t.start - r_lo, write_start=t.write_start - r_lo, write_stop=t.write_stop - r_lo)
                  for t in chosen)
    return AxisPlan(ap.axis, r_hi - r_lo, ap.tile, ap.halo, ap.scale, local), (r_lo, r_hi)


@dataclass
class _AxisBlock:
    """One block index along one axis: its tiles (local), read range, tile count; blend: reach and sources."""

    plan: AxisPlan | None
    read: Range
    count: int
    extent: Range
    interior: Range
    sources: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class BlockGrid:
    """The block layout over the tiled axes of a volume, on the volume's global tile plan ``plan``."""

    plan: TilePlan
    block: tuple[int, ...]
    run: Any = None  # the model's RunPlan for the volume, less its tiles (what each block runs them with)

    @property
    def axes(self) -> str:
        return self.plan.axes

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(p.size for p in self.plan.plans)

    @property
    def scale(self) -> tuple[float, ...]:
        return tuple(p.scale for p in self.plan.plans)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / b) for n, b in zip(self.sizes, self.block))

    @property
    def n_blocks(self) -> int:
        return math.prod(self.grid)

    def output_chunks(self) -> tuple[int, ...]:
        """Output chunk per tiled axis: the output block along y and x, one plane along z and t."""
        return tuple(int(round(b * s)) if a in "yx" else 1 for a, b, s in zip(self.axes, self.block, self.scale))

    def _core(self, k: int, i: int) -> Range:
        return i * self.block[k], min(self.sizes[k], (i + 1) * self.block[k])

    def _out(self, k: int, r: Range) -> Range:
        s = self.plan.plans[k].scale
        return int(round(r[0] * s)), int(round(r[1] * s))

    @cached_property
    def _axes(self) -> tuple[tuple[_AxisBlock, ...], ...]:
        """Per axis and block index: its tiles, read range, and (blend) reach and sources; computed once."""
        return tuple(self._axis_blocks(k) for k in range(len(self.axes)))

    def _axis_blocks(self, k: int) -> tuple[_AxisBlock, ...]:
        ap, g, b = self.plan.plans[k], self.grid[k], self.block[k]
        inner = [_inner(ap, t) for t in ap.tiles]
        if self.plan.mode == "blend":  # a tile belongs to the block holding the middle of its inner part
            owner = [min(g - 1, ((lo + hi) // 2) // b) for lo, hi in inner]
            tiles = [[t for t, o in zip(ap.tiles, owner) if o == i] for i in range(g)]
        else:
            tiles = [[t for t in ap.tiles if _writes_into(t, *self._core(k, i))] for i in range(g)]
        rows = []
        for i in range(g):
            local, read = _local_axis(ap, tiles[i])
            extent = interior = (0, 0)
            if self.plan.mode == "blend":
                own = [r for r, o in zip(inner, owner) if o == i]
                extent = (min(a for a, _ in own), max(z for _, z in own)) if own else (0, 0)
                lo, hi = self._core(k, i)
                for (a, z), o in zip(inner, owner):  # another block's tile reaching in from below or above
                    if a < hi and lo < z and o != i:
                        lo, hi = (max(lo, z), hi) if o < i else (lo, min(hi, a))
                extent, interior = self._out(k, extent), self._out(k, (lo, max(lo, hi)))
            rows.append(_AxisBlock(local, read, len(tiles[i]), extent, interior))
        if self.plan.mode == "blend":
            for i, row in enumerate(rows):
                lo, hi = self._out(k, self._core(k, i))
                row.sources.extend(j for j, other in enumerate(rows) if other.extent[0] < hi and lo < other.extent[1])
        return tuple(rows)

    def block_at(self, index: tuple[int, ...]) -> Block:
        rows = [self._axes[k][i] for k, i in enumerate(index)]
        core = tuple(self._core(k, i) for k, i in enumerate(index))
        out = tuple(self._out(k, c) for k, c in enumerate(core))
        plans = tuple(r.plan for r in rows)
        tiles = None if any(p is None for p in plans) else TilePlan(self.axes, self.plan.mode, plans)
        sums = None
        if self.plan.mode == "blend":
            sources = tuple(("-".join(map(str, other)),
                             tuple(self._axes[k][j].extent for k, j in enumerate(other)),
                             tuple(self._axes[k][j].interior for k, j in enumerate(other)))
                            for other in itertools.product(*(r.sources for r in rows)))
            sums = Sums(tuple(r.extent for r in rows), tuple(r.interior for r in rows), sources)
        return Block(tuple(index), tuple(r.read for r in rows), core, out, tiles, sums)

    def tiles_run(self) -> int:
        """Tiles summed over all blocks (crop: a tile that straddles a block boundary counts once per block)."""
        return math.prod(sum(r.count for r in rows) for rows in self._axes)

    def redundant_fraction(self) -> float:
        """Tiles run more than once, as a fraction of the tiles a single machine runs (0 for blend)."""
        return self.tiles_run() / self.plan.n_tiles - 1.0

    def __iter__(self) -> Iterator[Block]:
        for index in itertools.product(*(range(g) for g in self.grid)):
            yield self.block_at(index)


def _step(ap: AxisPlan) -> int:
    """The distance between neighbouring tiles along an axis (the whole axis when it has one tile)."""
    if len(ap.tiles) < 2:
        return ap.size
    return max(1, ap.tiles[1].start - ap.tiles[0].start)


def default_block(ap: AxisPlan) -> int:
    """A whole number of tile steps, at least the default block size (a tile step is where crop cores end)."""
    want = DEFAULT_BLOCK.get(ap.axis, DEFAULT_DEPTH)
    step = _step(ap)
    return min(ap.size, step * max(1, math.ceil(want / step)))


def plan_blocks(plan: TilePlan, block: tuple[int, ...] | None, run: Any = None) -> BlockGrid:
    """Plan blocks on a volume's global tile plan; ``block`` names the trailing axes (``--block Z,Y,X``), the
    rest get a whole number of tiles near the defaults.

    Refuses a block whose output size is not a whole number of voxels, and (crop) a layout that would run the
    average tile 1.5x or more: blocks smaller than the tiles throw most of their work away."""
    axes = plan.axes
    given = tuple(int(v) for v in block) if block else ()
    if len(given) > len(axes):
        raise ConfigError(f"--block {','.join(map(str, given))} has {len(given)} values, but the volume's tiled axes "
                          f"are {axes!r} ({len(axes)}); give at most {len(axes)}, e.g. --block "
                          f"{','.join(str(default_block(ap)) for ap in plan.plans)}.")
    values = [default_block(ap) for ap in plan.plans[:len(axes) - len(given)]] + list(given)
    sizes = []
    for ap, b in zip(plan.plans, values):
        a, n, s = ap.axis, ap.size, ap.scale
        if b < 1:
            raise ConfigError(f"--block {b} on axis {a!r} must be at least 1.")
        b = min(b, n)
        if abs(b * s - round(b * s)) > 1e-9:
            raise ConfigError(f"--block {b} on axis {a!r} times the output scale {s} is not a whole number of "
                              f"voxels; choose a block that is a multiple of {round(1 / s) if s < 1 else 1}.")
        sizes.append(b)
    grid = BlockGrid(plan, tuple(sizes), run)
    if given:
        extra = grid.redundant_fraction()
        if extra >= MAX_REDUNDANT:
            hint = ",".join(str(default_block(ap)) for ap in plan.plans[len(axes) - len(given):])
            raise ConfigError(f"--block {','.join(map(str, given))} cuts through the model's tiles so often that "
                              f"{extra:.0%} more tiles would run than on one machine (tiles {plan.tile_shape}; a "
                              f"tile that straddles a block boundary runs in every block it touches); use blocks "
                              f"of whole tiles, e.g. --block {hint}.")
    return grid
