"""Blocks of one volume for distributed runs: a core that each block writes, and the halo it reads around it.

Cores partition the volume on a regular grid (the last core per axis is ragged), so the output regions of two
blocks never share a chunk when the output chunks divide the block (``output_chunks``): each block writes whole
chunks of its own, without locks. Each block reads its core plus the model's halo (clipped at the volume's
borders, where the tiler reflects as a single-machine run does), so for a tile-invariant model with crop
stitching the core equals the single-machine output. Axes are the planner's tiled axes, loop axes first (a 2D
model's z/t planes: no halo). Imports only the standard library and scopert.errors.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator

from scopert.errors import ConfigError

DEFAULT_BLOCK = {"y": 512, "x": 512}
DEFAULT_DEPTH = 64  # z, or t of a 2D+t model, or a loop axis


@dataclass(frozen=True)
class Block:
    """One block: its grid index, the input range it reads, its core (input voxels) and output range."""

    index: tuple[int, ...]
    read: tuple[tuple[int, int], ...]
    core: tuple[tuple[int, int], ...]
    out: tuple[tuple[int, int], ...]

    @property
    def name(self) -> str:
        return "-".join(str(i) for i in self.index)


@dataclass(frozen=True)
class BlockGrid:
    """The block layout over the tiled axes ``axes`` (slowest first) of a volume of ``sizes``."""

    axes: str
    sizes: tuple[int, ...]
    block: tuple[int, ...]
    halo: tuple[int, ...]
    scale: tuple[float, ...]
    min_read: tuple[int, ...]

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / b) for n, b in zip(self.sizes, self.block))

    @property
    def n_blocks(self) -> int:
        return math.prod(self.grid)

    def output_chunks(self) -> tuple[int, ...]:
        """Output chunk per tiled axis: the output block along y and x, one plane along z and t."""
        return tuple(int(round(b * s)) if a in "yx" else 1 for a, b, s in zip(self.axes, self.block, self.scale))

    def block_at(self, index: tuple[int, ...]) -> Block:
        read, core, out = [], [], []
        for i, n, b, h, s, need in zip(index, self.sizes, self.block, self.halo, self.scale, self.min_read):
            lo, hi = i * b, min(n, (i + 1) * b)
            r_lo, r_hi = max(0, lo - h), min(n, hi + h)
            if r_hi - r_lo < need:  # e.g. a 2D+t model's time window: widen the read inside the volume
                r_lo = max(0, min(r_lo, r_hi - need))
                r_hi = min(n, max(r_hi, r_lo + need))
            read.append((r_lo, r_hi))
            core.append((lo, hi))
            out.append((int(round(lo * s)), int(round(hi * s))))
        return Block(tuple(index), tuple(read), tuple(core), tuple(out))

    def __iter__(self) -> Iterator[Block]:
        for index in itertools.product(*(range(g) for g in self.grid)):
            yield self.block_at(index)


def plan_blocks(axes: str, sizes: tuple[int, ...], block: tuple[int, ...] | None, halo: dict[str, int],
                scale: dict[str, float], min_read: dict[str, int] | None = None) -> BlockGrid:
    """Plan blocks; ``block`` names the trailing axes of ``axes`` (``--block Z,Y,X``), the rest get defaults.

    Refuses a block smaller than 2x the halo (most of what it reads would be thrown away, and below the halo
    the core would lack context) and a block whose output size is not a whole number of voxels."""
    given = tuple(int(v) for v in block) if block else ()
    if len(given) > len(axes):
        raise ConfigError(f"--block {','.join(map(str, given))} has {len(given)} values, but the volume's tiled axes "
                          f"are {axes!r} ({len(axes)}); give at most {len(axes)}, e.g. --block "
                          f"{','.join(str(DEFAULT_BLOCK.get(a, DEFAULT_DEPTH)) for a in axes)}.")
    values = [DEFAULT_BLOCK.get(a, DEFAULT_DEPTH) for a in axes[:len(axes) - len(given)]] + list(given)
    out_block, halos, scales, needs = [], [], [], []
    for a, n, b in zip(axes, sizes, values):
        h, s = int(halo.get(a, 0)), float(scale.get(a, 1.0))
        if b < 1:
            raise ConfigError(f"--block {b} on axis {a!r} must be at least 1.")
        if b < n and b < 2 * h:
            raise ConfigError(f"--block {b} on axis {a!r} is smaller than 2x the model's halo ({2 * h}); each block "
                              f"would read more halo than it writes. Use a block of at least {2 * h} "
                              f"(better 8x the halo) on {a!r}.")
        b = min(b, n)
        if abs(b * s - round(b * s)) > 1e-9:
            raise ConfigError(f"--block {b} on axis {a!r} times the output scale {s} is not a whole number of "
                              f"voxels; choose a block that is a multiple of {round(1 / s) if s < 1 else 1}.")
        out_block.append(b)
        halos.append(h)
        scales.append(s)
        needs.append(int((min_read or {}).get(a, 0)))
    return BlockGrid(axes, tuple(int(n) for n in sizes), tuple(out_block), tuple(halos), tuple(scales), tuple(needs))
