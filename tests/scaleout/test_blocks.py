"""Block planning on the volume's global tiles: cores partition the volume, each block runs exactly the tiles that
write into its core, reads stay inside the volume, chunks divide the blocks, and cut-up tiles are counted."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scopert.errors import ConfigError
from scopert.runtime.tiling import plan_tiles
from scopert.scaleout.blocks import BlockGrid, plan_blocks


def _plan(sizes, tile, halo, mode, axes="zyx", scale=None, divisor=None):
    shape = dict(zip(axes, sizes))
    return plan_tiles(shape, dict(zip(axes, tile)), dict(zip(axes, halo)), divisor or {}, scale or {}, mode)


@pytest.mark.parametrize("mode", ["crop", "blend"])
@pytest.mark.parametrize("sizes,tile,block", [((37, 150, 130), (12, 24, 28), (8, 48, 64)),
                                              ((5, 64, 64), (8, 32, 32), (5, 64, 64)),
                                              ((9, 17, 19), (6, 8, 8), (2, 4, 4))])
def test_cores_partition_the_volume_and_blocks_run_the_tiles_that_write_their_core(sizes, tile, block, mode):
    plan = _plan(sizes, tile, (1, 2, 2), mode, scale={"y": 2.0, "x": 2.0})
    grid = BlockGrid(plan, block)  # any block, however many tiles it cuts (plan_blocks refuses the worst)
    covered = np.zeros(sizes, np.int32)
    chunks = grid.output_chunks()
    for b in grid:
        covered[tuple(slice(lo, hi) for lo, hi in b.core)] += 1
        if b.tiles is None:  # blend: a block may own no tile (its core is made of its neighbours' sums)
            continue
        for ap, local, (lo, hi), (r_lo, r_hi), (o_lo, o_hi), c, n in zip(plan.plans, b.tiles.plans, b.core, b.read,
                                                                         b.out, chunks, sizes):
            assert 0 <= r_lo and r_hi <= n, "reads stay in the volume"
            assert mode == "blend" or (r_lo <= lo and hi <= r_hi), "crop: the read holds the core"
            assert o_lo % c == 0 and (o_hi % c == 0 or o_hi == round(n * ap.scale)), "writes start/end on chunks"
            starts = {t.start for t in ap.tiles}
            assert all(t.start + r_lo in starts for t in local.tiles), "a block's tiles are global tiles"
            if mode == "crop":  # every global tile that writes into the core is in the block
                for t in ap.tiles:
                    if t.write_start < hi and lo < t.write_stop:
                        assert any(u.start + r_lo == t.start for u in local.tiles)
        if mode == "blend":  # the interior lies in the core and in the block's own reach
            for (i0, i1), (e0, e1), (o0, o1) in zip(b.sums.interior, b.sums.extent, b.out):
                assert i1 <= i0 or (o0 <= i0 and i1 <= o1 and e0 <= i0 and i1 <= e1)
    if mode == "blend":  # each tile is run by exactly one block
        assert grid.tiles_run() == plan.n_tiles and grid.redundant_fraction() == 0
    assert covered.min() == 1 and covered.max() == 1, "every voxel is written by exactly one block"
    assert grid.n_blocks == len(list(grid)) == int(np.prod([-(-n // b) for n, b in zip(sizes, grid.block)]))
    assert grid.redundant_fraction() >= 0


def test_two_blocks_never_share_an_output_chunk():
    grid = BlockGrid(_plan((20, 100, 90), (8, 24, 24), (2, 2, 2), "blend"), (6, 32, 32))
    chunks = grid.output_chunks()
    owner = {}
    for b in grid:
        spans = [range(lo // c, -(-hi // c)) for (lo, hi), c in zip(b.out, chunks)]
        for idx in itertools.product(*spans):
            assert owner.setdefault(idx, b.name) == b.name, f"chunk {idx} written by {owner[idx]} and {b.name}"


def test_default_blocks_are_whole_tiles_and_crop_runs_no_tile_twice():
    plan = _plan((200, 1500, 1300), (40, 136, 136), (4, 4, 4), "crop")
    grid = plan_blocks(plan, None)
    steps = [p.tiles[1].start - p.tiles[0].start for p in plan.plans]
    assert all(b % s == 0 for b, s in zip(grid.block, steps)), (grid.block, steps)
    assert grid.block[1] >= 512 and grid.block[0] >= 64
    assert grid.redundant_fraction() < 0.05  # only the last, shifted-back tile per axis may straddle


def test_blocks_that_cut_most_tiles_in_two_are_refused_with_whole_tiles_to_use():
    plan = _plan((40, 200, 200), (16, 64, 64), (1, 2, 2), "crop")
    with pytest.raises(ConfigError, match=r"more tiles would run than on one machine.*--block"):
        plan_blocks(plan, (8, 8))
    # a block that covers the whole axis is fine whatever the tile
    assert plan_blocks(_plan((6, 200), (16, 32), (4, 4), "crop", axes="yx"), (6, 48)).grid == (1, 5)
    # blend runs each tile in one block whatever the block size
    assert plan_blocks(_plan((40, 200, 200), (16, 64, 64), (1, 2, 2), "blend"), (8, 8)).redundant_fraction() == 0


def test_trailing_values_and_defaults():
    grid = plan_blocks(_plan((3, 10, 600, 700), (1, 10, 130, 130), (0, 0, 1, 1), "crop", axes="tzyx"), (256, 256))
    assert grid.block[2:] == (256, 256) and grid.grid[2:] == (3, 3)
    with pytest.raises(ConfigError, match="at most 2"):
        plan_blocks(_plan((64, 64), (32, 32), (0, 0), "crop", axes="yx"), (1, 32, 32))


def test_time_window_tiles_are_read_whole_inside_the_movie():
    plan = _plan((17, 64, 64), (6, 32, 32), (1, 2, 2), "crop", axes="tyx")
    for b in plan_blocks(plan, (4, 64, 64)):
        lo, hi = b.read[0]
        assert 0 <= lo and hi <= 17
        for t in b.tiles.plans[0].tiles:  # each 6-frame window, clipped to the movie, lies inside the read
            assert lo <= max(0, t.start + lo) and min(17, t.start + lo + 6) <= hi and t.size == 6


def test_small_blocks_are_explained_once(caplog):
    """Issue 24: blocks under ~1 M voxels pay a per-block cost their compute does not hide; the log says so (and
    what to give instead), and says nothing for the default blocks or one block."""
    from types import SimpleNamespace

    from scopert.scaleout.volume import warn_small_blocks

    with caplog.at_level("WARNING", logger="scopert.scaleout.volume"):
        warn_small_blocks(SimpleNamespace(block=(18, 54, 54), n_blocks=64), (18, 54, 54))
        warn_small_blocks(SimpleNamespace(block=(64, 512, 512), n_blocks=8), None)
        warn_small_blocks(SimpleNamespace(block=(64, 512, 512), n_blocks=8), (64, 512, 512))
        warn_small_blocks(SimpleNamespace(block=(18, 54, 54), n_blocks=1), (18, 54, 54))
    (record,) = caplog.records
    assert "--block 18,54,54 holds 0.05 M voxels" in record.message and "64 blocks" in record.message
