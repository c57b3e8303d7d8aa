"""Block planning: cores partition the volume, reads add the halo inside the volume, chunks divide the blocks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scopert.scaleout.blocks import plan_blocks
from scopert.errors import ConfigError


@pytest.mark.parametrize("sizes,block", [((37, 150, 130), (8, 48, 64)), ((5, 64, 64), (5, 64, 64)),
                                         ((3, 7, 9), (2, 4, 4))])
def test_cores_partition_the_volume_and_outputs_are_chunk_aligned(sizes, block):
    grid = plan_blocks("zyx", sizes, block, {"z": 1, "y": 2, "x": 2}, {"y": 2.0, "x": 2.0})
    covered = np.zeros(sizes, np.int32)
    chunks = grid.output_chunks()
    for b in grid:
        covered[tuple(slice(lo, hi) for lo, hi in b.core)] += 1
        for (lo, hi), (r_lo, r_hi), (o_lo, o_hi), h, c, n, s in zip(b.core, b.read, b.out, grid.halo, chunks,
                                                                    sizes, grid.scale):
            assert r_lo == max(0, lo - h) and r_hi == min(n, hi + h)
            assert o_lo % c == 0 and (o_hi % c == 0 or o_hi == round(n * s)), "writes start and end on chunks"
    assert covered.min() == 1 and covered.max() == 1, "every voxel is written by exactly one block"
    assert grid.n_blocks == len(list(grid)) == int(np.prod([-(-n // b) for n, b in zip(sizes, grid.block)]))


def test_two_blocks_never_share_an_output_chunk():
    grid = plan_blocks("zyx", (20, 100, 90), (6, 32, 32), {"z": 2, "y": 2, "x": 2}, {})
    chunks = grid.output_chunks()
    owner = {}
    for b in grid:
        spans = [range(lo // c, -(-hi // c)) for (lo, hi), c in zip(b.out, chunks)]
        for idx in itertools.product(*spans):
            assert owner.setdefault(idx, b.name) == b.name, f"chunk {idx} written by {owner[idx]} and {b.name}"


def test_block_smaller_than_twice_the_halo_is_refused():
    with pytest.raises(ConfigError, match="2x the model's halo"):
        plan_blocks("zyx", (40, 200, 200), (8, 6, 64), {"z": 2, "y": 4, "x": 4}, {})
    # a block that covers the whole axis is fine whatever the halo
    assert plan_blocks("yx", (6, 200), (6, 64), {"y": 4, "x": 4}, {}).grid == (1, 4)


def test_trailing_values_and_defaults():
    grid = plan_blocks("tzyx", (3, 10, 600, 700), (256, 256), {"y": 1, "x": 1}, {})
    assert grid.block == (3, 10, 256, 256) and grid.grid == (1, 1, 3, 3)
    with pytest.raises(ConfigError, match="at most 2"):
        plan_blocks("yx", (64, 64), (1, 32, 32), {}, {})


def test_time_window_widens_short_reads_inside_the_movie():
    grid = plan_blocks("tyx", (17, 64, 64), (4, 64, 64), {"t": 1, "y": 2, "x": 2}, {}, min_read={"t": 6})
    for b in grid:
        lo, hi = b.read[0]
        assert hi - lo >= 6 and 0 <= lo and hi <= 17
        assert lo <= b.core[0][0] - min(1, b.core[0][0]) and hi >= min(17, b.core[0][1] + 1)
