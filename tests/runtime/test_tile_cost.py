"""Cost-based default tiles (issue 24): the count matches the tiler's plan, a volume that fits runs as one tile,
the memory budget holds, and the choice never computes more than the old training-patch tile."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scopert.runtime.tile_cost import axis_cost, choose_tile
from scopert.runtime.tiling import plan_axis, round_up


@settings(max_examples=300, deadline=None, derandomize=True)
@given(size=st.integers(1, 900), halo=st.integers(0, 20), divisor=st.sampled_from([1, 2, 4, 8, 16]),
       extra=st.integers(1, 300), mode=st.sampled_from(["crop", "blend"]))
def test_axis_cost_counts_what_the_tiler_plans(size, halo, divisor, extra, mode):
    tile = round_up(2 * halo + extra, divisor)
    plan = plan_axis("y", size, tile, halo, divisor, 1.0, mode)
    n, computed = axis_cost(size, tile, halo, divisor, mode)
    assert n == len(plan.tiles) and computed == n * plan.tile


@settings(max_examples=60, deadline=None, derandomize=True)
@given(z=st.integers(8, 200), y=st.integers(16, 1500), halo=st.integers(0, 12),
       mode=st.sampled_from(["crop", "blend"]), budget_mb=st.integers(1, 4000))
def test_the_choice_fits_the_budget_and_beats_the_training_tile(z, y, halo, mode, budget_mb):
    shape, h, d = {"z": z, "y": y, "x": y}, {"z": halo, "y": halo, "x": halo}, {"z": 4, "y": 4, "x": 4}
    choice = choose_tile(shape, h, d, mode, bytes_per_voxel=256, budget_bytes=budget_mb * 2**20)
    voxels = math.prod(choice.tile.values())
    floor = math.prod(min(round_up(4 * halo + 4, 4), round_up(shape[a] + 2 * halo, 4)) for a in shape)
    assert voxels * 256 <= budget_mb * 2**20 or voxels == floor, "over budget only at the smallest legal tile"
    unbounded = choose_tile(shape, h, d, mode, 256, budget_bytes=2**62)

    def cost(c):
        return math.prod(axis_cost(shape[a], c.tile[a], halo, 4, mode)[1] for a in shape) + c.n_tiles * 32_768

    assert choice.bound == (cost(unbounded) < cost(choice)), "bound: the budget ruled out a cheaper tile"
    old = {a: round_up(max(32 if a == "z" else 64, 4 * halo + 4), 4) for a in shape}  # a training patch
    if math.prod(old.values()) * 256 <= budget_mb * 2**20:
        cost = math.prod(axis_cost(shape[a], choice.tile[a], halo, 4, mode)[1] for a in shape)
        cost_old = math.prod(axis_cost(shape[a], old[a], halo, 4, mode)[1] for a in shape)
        n_old = math.prod(axis_cost(shape[a], old[a], halo, 4, mode)[0] for a in shape)
        assert cost + choice.n_tiles * 32_768 <= cost_old + n_old * 32_768


def test_a_volume_that_fits_runs_as_one_tile_and_pinned_axes_keep_their_size():
    choice = choose_tile({"z": 64, "y": 118, "x": 209}, {"z": 9, "y": 9, "x": 9}, {}, "blend", 64,
                         budget_bytes=4 * 2**30)
    assert choice.n_tiles == 1 and choice.tile == {"z": 82, "y": 136, "x": 227}
    assert choice.overhead == pytest.approx(82 * 136 * 227 / (64 * 118 * 209))
    pinned = choose_tile({"t": 40, "y": 512, "x": 512}, {"y": 8, "x": 8}, {"y": 2, "x": 2}, "blend", 1024,
                         pinned={"t": 5}, budget_bytes=2**30)
    assert pinned.tile["t"] == 5 and "voxels computed per voxel written" in pinned.why()


def test_an_axis_shorter_than_four_halos_runs_as_one_tile_over_it():
    """The seed-size U-Net (halo 36) on the 64-plane ovule: one tile of 136 planes, not the 152-plane floor."""
    choice = choose_tile({"z": 64, "y": 200, "x": 200}, {"z": 36, "y": 35, "x": 38}, {"z": 8, "y": 8, "x": 8},
                         "blend", 1536, budget_bytes=5 * 2**30)
    assert choice.tile["z"] == 136 and choice.bound, choice
    free = choose_tile({"z": 64, "y": 200, "x": 200}, {"z": 36, "y": 35, "x": 38}, {"z": 8, "y": 8, "x": 8},
                       "blend", 1536, budget_bytes=2**40)
    assert free.n_tiles == 1 and free.tile == {"z": 136, "y": 272, "x": 280} and not free.bound


def test_info_says_the_default_tile_for_a_shape(tmp_path):
    from click.testing import CliRunner

    from scopert.cli import cli
    from tests.runtime.graphs import conv_stack

    conv_stack(tmp_path / "m.onnx", ndim=3)
    res = CliRunner().invoke(cli, ["info", str(tmp_path / "m.onnx"), "--shape", "64,118,209"])
    assert res.exit_code == 0, res.output
    assert "default tile for 64x118x209:" in res.output and "1 tile(s)" in res.output
