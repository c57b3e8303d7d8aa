"""``scopert bench --compare`` reports FLOPs per voxel, GFLOP/s and the fraction of the measured peak."""

from __future__ import annotations

import pytest

from scopert.runtime import load
from scopert.runtime.tools.bench import compare_engines
from tests.runtime.graphs import conv_stack

pytest.importorskip("openvino")


def test_compare_engines_adds_roofline(tmp_path):
    path = tmp_path / "stack.onnx"
    conv_stack(path, ndim=2, layers=3, channels=8)
    model = load(path, backend="ort", device="cpu")
    res = compare_engines(path, model, {"y": 256, "x": 256}, batch=1, repeats=1)
    hand = 2 * (1 * 8 * 9 + 8 * 8 * 9 + 8 * 1 * 9)
    assert res["roofline"]["flops"]["flops_per_voxel"] == hand
    for name, row in res["engines"].items():
        expect = hand * 256 * 256 / row["seconds"] / 1e9  # seconds are rounded to 0.1 ms
        assert row["roofline_gflops"] == pytest.approx(expect, rel=0.05, abs=0.1)
        assert 0 < row["roofline_fraction_of_peak"] < 5  # a tiny graph is far from the dense-kernel peak
    assert "f32" in res["roofline"]["peaks"]


def test_a_plain_bench_reports_its_fraction_of_the_peak(tmp_path):
    """Issue 24: every bench (not only --compare) says how close to the limit the engine and precision it ran are."""
    from scopert.runtime.tools.bench import bench_pipeline, run_roofline

    path = tmp_path / "stack.onnx"
    conv_stack(path, ndim=2, layers=3, channels=8)
    model = load(path, backend="ort", device="cpu")
    result = bench_pipeline(model, (300, 260), (128, 128), batch=2, repeats=1)
    roof = run_roofline(path, model, result)
    hand = 2 * (1 * 8 * 9 + 8 * 8 * 9 + 8 * 1 * 9)
    assert roof["engine"] == "ort_f32" and roof["flops_per_voxel"] == hand
    per_batch = result["raw_seconds"] * 2 / result["tiles"]
    assert roof["gflops"] == pytest.approx(hand * 2 * 128 * 128 / per_batch / 1e9, rel=0.05, abs=0.1)
    assert 0 < roof["fraction_of_peak"] < 5 and roof["peak_gflops"] > 0
