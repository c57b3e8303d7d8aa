"""The engine's measured memory footprint (issue 24): measured in a fresh process only where the graph's estimate
bounds the default tile, fitted as a fixed part plus bytes per voxel, cached beside the model, and the tile it
yields fits a quarter of the memory available."""

from __future__ import annotations

import math

import pytest

from scopert.runtime.selection import footprint as fp
from scopert.runtime import load, tile_cost
from tests.runtime.graphs import conv_stack

pytestmark = pytest.mark.skipif(not fp.Path("/proc/self/status").exists(), reason="needs Linux /proc")


def test_fit_separates_the_fixed_part_and_survives_noise():
    assert fp.fit([(2000, 10_000 + 2000 * 800), (1000, 10_000 + 1000 * 800)]) == (10_000, 800)
    assert fp.fit([(1000, 900_000), (2000, 850_000)]) == (0, 425)  # the larger no dearer: its whole peak per voxel
    assert fp.fit([(1000, 900_000)]) == (0, 900)  # a graph that fixes every axis: one tile


def test_a_child_measures_a_real_engine_and_the_record_is_reused(tmp_path, monkeypatch):
    conv_stack(tmp_path / "m.onnx", ndim=3, channels=32)
    model = load(tmp_path / "m.onnx", backend="ort")
    first = model.footprint()
    assert first is not None and first.basis == "measured on ort f32"
    # the largest activation alone is 32 channels x 4 B per voxel; input and output add 8 B
    assert 128 <= first.bytes_per_voxel < 20_000, first
    assert (tmp_path / "engines" / fp.CACHE_NAME).is_file()

    def no_child(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(fp, "peak_in_child", no_child)
    again = load(tmp_path / "m.onnx", backend="ort").footprint()
    assert (again.fixed_bytes, again.bytes_per_voxel) == (first.fixed_bytes, first.bytes_per_voxel)
    assert again.basis.endswith("(cached)")


def test_a_child_that_cannot_measure_leaves_the_estimate(tmp_path):
    conv_stack(tmp_path / "m.onnx", ndim=2)
    assert fp.peak_in_child(tmp_path / "m.onnx", "no-such-engine", "f32", (1, 1, 64, 64), 1) is None


def test_the_engine_is_measured_only_where_the_estimate_bounds_the_tile(tmp_path, monkeypatch):
    conv_stack(tmp_path / "m.onnx", ndim=3, channels=16)
    model = load(tmp_path / "m.onnx", backend="ort")
    shape = {"z": 64, "y": 1024, "x": 1024}
    monkeypatch.setattr(tile_cost, "available_memory", lambda: 2**40)
    _, why = model.tile_choice(shape)
    assert "estimated from the graph" in why and "1 tile(s)" in why
    assert not (tmp_path / "engines" / fp.CACHE_NAME).exists(), "nothing measured where memory does not bind"

    available = 2**30
    monkeypatch.setattr(tile_cost, "available_memory", lambda: available)
    tile, why = model.tile_choice(shape)
    measured = model.footprint()
    assert "measured on ort f32" in why, why
    assert measured.bytes_for(math.prod(tile.values())) <= tile_cost.MEMORY_SHARE * available
    assert (tmp_path / "engines" / fp.CACHE_NAME).is_file()
