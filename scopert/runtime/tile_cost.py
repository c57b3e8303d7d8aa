"""The default tile: the one that computes the fewest voxels per voxel written, within a memory budget.

A tile computes its halo and its divisor padding again for every core it writes, and blend overlaps neighbours
by a quarter of the core besides; small tiles pay that many times (an imported 3D-RCAN on its 8x32x32 training
patch ran 98 tiles of 37^3 for a 64x118x200 volume, 7x the voxels written, and was 2.4x slower than one tile).
So the default weighs, per axis, how many voxels the tiles of a candidate size compute (the same count the
tiler's plan makes, ``axis_cost``), adds a fixed cost per tile (a backend call, a reflection, a stitch), and
takes the cheapest candidate whose batch fits the memory budget: a quarter of the memory available now, for
the graph's estimate (its largest activation times ``LIVE_BUFFERS`` per voxel), or where that estimate bounds
the tile, for the engine's own footprint, measured (``selection.footprint``: the estimate missed by 0.6x to
2.7x). A quarter, not more: an engine keeps a compiled shape's buffers after the run, a process may hold several
models (two seed-size U-Nets at half the memory each and MONAI beside them were killed for memory), and a local
cluster runs one worker per core on tiles planned from the client's memory. A volume that fits in one tile plus
its halo runs as one tile, and an axis shorter than 4x its halo gets one tile over the whole axis. Imports only
the standard library and the tiling module.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Any

from scopert.runtime.tiling import default_overlap, round_up

LIVE_BUFFERS = 4  # activations alive at once per voxel (input, output, a skip or residual, workspace)
TILE_COST_VOXELS = 32_768  # per-tile fixed cost, in voxels of compute (a backend call, reflection, stitching)
MEMORY_SHARE = 0.25  # of the memory available when the plan is made
MAX_CANDIDATES = 40  # per axis
ESTIMATED = "estimated from the graph"  # the basis of a budget without a measured footprint


@dataclass(frozen=True)
class TileChoice:
    """The chosen tile, what it costs, and the budget that bounded it (for the log and ``scopert info``)."""

    tile: dict[str, int]
    n_tiles: int
    overhead: float  # voxels computed per voxel written
    budget_bytes: int
    bytes_per_voxel: int
    bound: bool = False  # the budget ruled out a tile that computes fewer voxels
    basis: str = ESTIMATED  # or "measured on <engine> <precision>"

    def why(self) -> str:
        return (f"{'x'.join(map(str, self.tile.values()))}: {self.n_tiles} tile(s), {self.overhead:.2f} voxels "
                f"computed per voxel written, the fewest within {self.budget_bytes / 2**30:.1f} GiB "
                f"({self.bytes_per_voxel} B per voxel, {self.basis})")


def nominal_tile(card: Any, axis: str) -> int:
    """The card's training tile on ``axis`` (else the window along t, 32 along z, 256 along y/x), at least 4x the
    halo + the divisor: a tile of a typical run's size for choices that must not depend on the input (the
    measured engine choice, an engine profile), and what the runtime used by default before ``choose_tile``."""
    d, h = int(card.input.divisor.get(axis, 1)), int(card.halo.get(axis, 0))
    base = card.default_tile.get(axis) or (card.input.time_window if axis == "t" else (32 if axis == "z" else 256))
    return round_up(max(int(base), 4 * h + d), d)


def available_memory() -> int:
    """Bytes of memory available now (Linux MemAvailable; else the free physical pages; else 4 GiB)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def axis_cost(size: int, tile: int, halo: int, divisor: int, mode: str) -> tuple[int, int]:
    """(tiles, voxels computed) along one axis, as ``tiling.plan_axis`` places them."""
    if size + 2 * halo <= tile:
        return 1, round_up(size + 2 * halo, divisor)
    core = tile - 2 * halo
    align = divisor if core >= divisor else 1
    if mode == "crop":
        step = core - core % align
        n = math.ceil(size / step)
    else:
        overlap = default_overlap(tile, halo, align)
        last = -(-(size + 2 * halo - tile) // align)
        n = max(1, math.ceil(last / max(1, (tile - overlap) // align)) + 1)
    return n, n * tile


def _candidates(size: int, halo: int, divisor: int, floor: int) -> list[int]:
    """Tile sizes worth trying on one axis: one tile over the whole axis, n even tiles, and a geometric ladder."""
    whole = round_up(size + 2 * halo, divisor)
    if whole <= floor:  # one tile over the whole axis computes less than the smallest tile that splits it
        return [whole]
    sizes = {whole}
    for n in range(2, 64):
        sizes.add(round_up(math.ceil(size / n) + 2 * halo, divisor))
    t = floor
    while t < whole:
        sizes.add(t)
        t = round_up(int(t * 1.25) + 1, divisor)
    found = sorted(s for s in sizes if floor <= s <= whole) or [max(floor, divisor)]
    if len(found) > MAX_CANDIDATES:  # keep the ends and an even spread between them
        step = (len(found) - 1) / (MAX_CANDIDATES - 1)
        found = sorted({found[round(i * step)] for i in range(MAX_CANDIDATES)})
    return found


def choose_tile(shape: dict[str, int], halo: dict[str, int], divisor: dict[str, int], mode: str,
                bytes_per_voxel: int, batch: int = 1, pinned: dict[str, int] | None = None,
                budget_bytes: int | None = None, basis: str = ESTIMATED) -> TileChoice:
    """The tile over ``shape``'s axes that computes the fewest voxels (plus a fixed cost per tile) with a batch
    of activations inside the budget; ``pinned`` axes keep their given size (e.g. a 2D+t model's time window)."""
    budget = int(budget_bytes if budget_bytes is not None else MEMORY_SHARE * available_memory())
    pinned = pinned or {}
    axes = list(shape)
    options = []
    for ax in axes:
        h, d = int(halo.get(ax, 0)), int(divisor.get(ax, 1))
        if ax in pinned:
            sizes = [pinned[ax]]
        else:
            sizes = _candidates(shape[ax], h, d, round_up(4 * h + d, d))
        options.append([(t,) + axis_cost(shape[ax], t, h, d, mode) for t in sizes])
    limit = max(1, budget // max(1, bytes_per_voxel * batch))
    best, cheapest = None, math.inf
    for combo in itertools.product(*options):
        voxels = math.prod(c[0] for c in combo)
        n_tiles = math.prod(c[1] for c in combo)
        cost = math.prod(c[2] for c in combo) + n_tiles * TILE_COST_VOXELS
        cheapest = min(cheapest, cost)
        fits = voxels <= limit
        key = (not fits, cost if fits else voxels)  # over budget everywhere: the smallest tile
        if best is None or key < best[0]:
            best = (key, combo, cost)
    _, combo, cost = best
    n_tiles = math.prod(c[1] for c in combo)
    overhead = math.prod(c[2] for c in combo) / max(1, math.prod(shape.values()))
    return TileChoice({ax: c[0] for ax, c in zip(axes, combo)}, n_tiles, overhead, budget, bytes_per_voxel,
                      bound=cheapest < cost, basis=basis)
