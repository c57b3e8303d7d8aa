"""Tile planning over the tiled axes of an array (spatial axes, and time for 2D+t models).

A tile is an input window of fixed size along each tiled axis, placed on a grid. Windows may reach past
the image; the reader fills that part by reflection. Two grids exist:

- ``crop``: cores of ``tile - 2*halo`` (rounded down to the divisor) partition the image; a tile's halo
  is discarded, so every output voxel is written exactly once. The last core is shifted back to stay
  inside the image and writes only what the previous core left.
- ``blend``: windows cover ``[-halo, size + halo)`` at even spacing with at least ``overlap`` voxels
  shared by neighbours; outputs are averaged with a smooth weight (see ``stitch.py``).

In both, every window starts on the whole image's divisor grid (``start + halo`` is a multiple of the
divisor): a model that downsamples by its divisor (U-Net, strided generator) then sees each tile in the
same pooling phase as the whole image, and tiles agree with whole-image inference and with each other.
To stay on that grid the last window may reach up to ``divisor - 1`` voxels past ``size + halo``.

Imports only numpy and the standard library.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field

from scopert.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AxisTile:
    """One tile's placement along one axis, in input voxels (``out_*`` in output voxels)."""

    start: int  # first input index of the window (may be negative: reflected)
    size: int  # window size (the model's input tile size on this axis)
    write_start: int  # first image index this tile writes (crop) or the window's clipped start (blend)
    write_stop: int  # one past the last image index it writes
    at_low_border: bool
    at_high_border: bool


@dataclass(frozen=True)
class AxisPlan:
    axis: str
    size: int  # image size along the axis (input voxels)
    tile: int
    halo: int
    scale: float
    tiles: tuple[AxisTile, ...]

    @property
    def out_size(self) -> int:
        return int(round(self.size * self.scale))


@dataclass(frozen=True)
class Tile:
    """A tile: its index on the grid and its placement per tiled axis."""

    index: tuple[int, ...]
    axes: tuple[AxisTile, ...]


@dataclass
class TilePlan:
    axes: str  # the tiled axes, in array order
    mode: str  # 'crop' or 'blend'
    plans: tuple[AxisPlan, ...]
    grid: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.grid = tuple(len(p.tiles) for p in self.plans)

    @property
    def tile_shape(self) -> tuple[int, ...]:
        return tuple(p.tile for p in self.plans)

    @property
    def n_tiles(self) -> int:
        return math.prod(self.grid)

    def __iter__(self):
        """Tiles in row-major order: the slowest tiled axis changes last, so slabs complete in order."""
        for index in itertools.product(*(range(n) for n in self.grid)):
            yield Tile(index, tuple(p.tiles[i] for p, i in zip(self.plans, index)))

    def rows(self):
        """Tiles grouped by their index along the slowest tiled axis (one group = one slab)."""
        row: list[Tile] = []
        current = None
        for tile in self:
            if current is not None and tile.index[0] != current:
                yield current, row
                row = []
            current = tile.index[0]
            row.append(tile)
        if row:
            yield current, row


def round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def plan_axis(axis: str, size: int, tile: int, halo: int, divisor: int, scale: float, mode: str,
              overlap: int | None = None, fixed: bool = False) -> AxisPlan:
    """Plan one axis. ``tile`` is the model input size including the halo on both sides.

    ``fixed``: the graph takes exactly ``tile`` here. An image that fits in it is then run as one window of that
    size, centred on the image (an image of exactly the tile's size runs whole, with no padding at all, as
    whole-image inference does); a larger one gets tiles of exactly ``tile``."""
    if size < 1:
        raise ConfigError(f"axis {axis!r} has size {size}; the input is empty.")
    if tile % divisor:
        raise ConfigError(
            f"tile size {tile} on axis {axis!r} is not divisible by the model's divisor {divisor}; "
            f"use {round_up(tile, divisor)} (or another multiple of {divisor})."
        )
    if tile <= 2 * halo:
        raise ConfigError(
            f"tile size {tile} on axis {axis!r} is not larger than 2x the halo ({2 * halo}); nothing would be "
            f"left after discarding the halo. Use a tile of at least {round_up(2 * halo + divisor, divisor)}."
        )
    if abs(tile * scale - round(tile * scale)) > 1e-6:
        raise ConfigError(f"tile size {tile} on axis {axis!r} times the output scale {scale} is not an integer.")

    if fixed and size <= tile:
        start = -((tile - size) // 2)
        return AxisPlan(axis, size, tile, halo, scale, (AxisTile(start, tile, 0, size, True, True),))
    # An image that fits in one tile gets one window, shrunk to what the image needs.
    if size + 2 * halo <= tile:
        need = round_up(size + 2 * halo, divisor)
        if need > size + 2 * halo:
            log.info("axis %r: %d voxels + halo reflect-padded to %d (divisor %d); the output keeps the input size",
                     axis, size, need, divisor)
        only = AxisTile(-halo, need, 0, size, True, True)
        return AxisPlan(axis, size, need, halo, scale, (only,))

    align = _grid(axis, tile - 2 * halo, divisor)
    if mode == "crop":
        core = tile - 2 * halo
        step = core - core % align  # cores on the divisor grid
        n = math.ceil(size / step)
        tiles = []
        for k in range(n):
            write_start = k * step
            write_stop = min(size, (k + 1) * step)
            start = write_start - halo if k < n - 1 else round_up(size - core, align) - halo
            tiles.append(AxisTile(start, tile, write_start, write_stop, k == 0, k == n - 1))
        return AxisPlan(axis, size, tile, halo, scale, tuple(tiles))

    if mode == "blend":
        # Neighbours share their halos plus a quarter of the valid part, where the blend happens.
        if overlap is None:  # at most tile - align, so neighbours can stay on the divisor grid
            overlap = default_overlap(tile, halo, align)
        elif overlap < 2 * halo:
            log.warning("overlap %d on axis %r is below 2x the halo (%d); using %d so every voxel gets full context",
                        overlap, axis, 2 * halo, 2 * halo)
            overlap = 2 * halo
        if overlap >= tile:
            raise ConfigError(f"overlap {overlap} on axis {axis!r} must be smaller than the tile ({tile}).")
        # windows cover [-halo, size + halo); positions count in grid units of ``align`` voxels
        last = -(-(size + 2 * halo - tile) // align)
        max_step = (tile - overlap) // align
        if max_step < 1:  # neighbours this close cannot stay on the grid
            log.warning("axis %r: an overlap of %d leaves neighbouring windows less than the divisor %d apart, so "
                        "they cannot stay on the divisor grid; use an overlap of at most %d.",
                        axis, overlap, align, tile - align)
            align, last, max_step = 1, size + 2 * halo - tile, tile - overlap
        n = max(1, math.ceil(last / max_step) + 1)
        starts = [align * round(k * last / (n - 1)) - halo if n > 1 else -halo for k in range(n)]
        tiles = [
            AxisTile(s, tile, max(0, s), min(size, s + tile), k == 0, k == n - 1) for k, s in enumerate(starts)
        ]
        return AxisPlan(axis, size, tile, halo, scale, tuple(tiles))

    raise ConfigError(f"unknown stitch mode {mode!r}; use 'crop' or 'blend'.")


def default_overlap(tile: int, halo: int, align: int) -> int:
    """Blend: neighbours share their halos plus a quarter of the valid part, and stay on the ``align`` grid."""
    return min(2 * halo + (tile - 2 * halo) // 4, tile - align)


def _grid(axis: str, core: int, divisor: int) -> int:
    """The grid windows start on: the divisor, or 1 when the core is smaller than it (then say so)."""
    if core >= divisor:
        return divisor
    log.warning("axis %r: the tile leaves %d voxels after the halo, fewer than the divisor %d, so tiles cannot "
                "stay on the divisor grid; a model that downsamples may show seams. Use a tile of at least "
                "2x the halo + %d.", axis, core, divisor, divisor)
    return 1


def plan_tiles(shape: dict[str, int], tile: dict[str, int], halo: dict[str, int], divisor: dict[str, int],
               scale: dict[str, float], mode: str, overlap: dict[str, int] | None = None,
               fixed: set[str] | frozenset[str] = frozenset()) -> TilePlan:
    """Plan tiles over the axes in ``shape`` (ordered: the first is the slowest axis); ``fixed`` axes take
    windows of exactly their tile size (see ``plan_axis``)."""
    plans = tuple(
        plan_axis(ax, n, tile[ax], halo.get(ax, 0), divisor.get(ax, 1), scale.get(ax, 1.0), mode,
                  None if overlap is None else overlap.get(ax), fixed=ax in fixed)
        for ax, n in shape.items()
    )
    return TilePlan("".join(shape), mode, plans)
