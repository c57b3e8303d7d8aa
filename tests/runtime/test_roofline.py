"""The FLOP counter against hand counts on two small graphs, and the peak/fraction arithmetic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from scopert.runtime.tools.roofline import Peak, achieved, best_peak, count_flops, formula_peak, measure_peak
from tests.runtime.graphs import conv_stack

pytest.importorskip("openvino")


def test_conv_stack_matches_hand_count(tmp_path):
    path = tmp_path / "stack.onnx"
    conv_stack(path, ndim=2, layers=3, channels=4)  # 1->4->4->1, 3x3, stride 1, 'same' padding
    count = count_flops(path, (2, 1, 32, 48))
    hand_macs_per_voxel = 1 * 4 * 9 + 4 * 4 * 9 + 4 * 1 * 9  # 216
    assert count.output_voxels == 2 * 32 * 48
    assert count.flops_per_voxel == pytest.approx(2 * hand_macs_per_voxel)
    assert set(count.by_op) == {"Convolution"}


def test_convtranspose_and_matmul_match_hand_count(tmp_path):
    rng = np.random.default_rng(0)
    w_t = numpy_helper.from_array(rng.standard_normal((2, 3, 2, 2)).astype(np.float32), "wt")  # [Cin, Cout, k, k]
    m = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "m")
    w_g = numpy_helper.from_array(rng.standard_normal((3, 1, 3, 3)).astype(np.float32), "wg")  # depthwise
    nodes = [helper.make_node("ConvTranspose", ["input", "wt"], ["up"], strides=[2, 2]),
             helper.make_node("MatMul", ["up", "m"], ["mixed"]),
             helper.make_node("Conv", ["mixed", "wg"], ["output"], group=3, pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], [w_t, m, w_g])
    path = tmp_path / "mixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    count = count_flops(path, (1, 2, 8, 8))
    convt = 2 * (2 * 8 * 8) * 3 * 4  # every input element meets Cout x k^2 weights
    matmul = 2 * (3 * 16 * 16) * 16  # output elements x K
    depthwise = 2 * (3 * 16 * 16) * 1 * 9  # output elements x Cin/groups x k^2
    assert count.by_op["ConvolutionBackpropData"] == pytest.approx(convt)
    assert count.by_op["MatMul"] == pytest.approx(matmul)
    assert count.by_op["GroupConvolution"] == pytest.approx(depthwise)
    assert count.output_voxels == 256 and count.flops_per_voxel == pytest.approx((convt + matmul + depthwise) / 256)


def test_peak_and_fraction(tmp_path):
    peak = measure_peak("f32", size=256, repeats=2)
    assert peak.gflops > 0.5 and peak.seconds > 0
    path = tmp_path / "stack.onnx"
    conv_stack(path, ndim=2, layers=3, channels=4)
    count = count_flops(path, (1, 1, 64, 64))
    row = achieved(count, 1e-4, peak)
    assert row["gflops"] == pytest.approx(count.flops / 1e-4 / 1e9, rel=1e-2)
    assert row["fraction_of_peak"] == pytest.approx(row["gflops"] / peak.gflops, rel=1e-2)
    paper = formula_peak(frozenset({"avx2", "fma"}), threads=2)
    assert "8" in paper["f32_lanes"] and "assumed" in paper["fma_units"]


@pytest.mark.parametrize("flags, f32, bf16", [
    ({"avx2", "fma"}, 2 * 8 * 2 * 2 * 2.0, None),  # 2 cores x 8 lanes x 2 FMA x 2 FLOP x 2 GHz
    ({"avx512f", "avx512_bf16"}, 2 * 16 * 2 * 2 * 2.0, 2 * 2 * 16 * 2 * 2 * 2.0),
    ({"avx512f", "avx512_bf16", "amx_bf16"}, 2 * 16 * 2 * 2 * 2.0, 2 * 1024 * 2.0),
])
def test_formula_peak_per_flag_set(tmp_path, flags, f32, bf16):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2000.000\n")
    paper = formula_peak(frozenset(flags), cpuinfo=cpuinfo, threads=2)
    assert paper["gflops_f32"] == pytest.approx(f32)
    assert paper["gflops_bf16"] == (pytest.approx(bf16) if bf16 else None)
    assert ("amx" in paper["bf16_flop_per_cycle"]) == ("amx_bf16" in flags)


def test_best_peak_keeps_the_highest_reading():
    low, high = Peak("f32", 150.0, 0.02, "start"), Peak("f32", 250.0, 0.01, "end")
    assert best_peak(low, None, high) is high and best_peak(None) is None
    assert measure_peak("f32", size=(64, 128), repeats=1).how.endswith("(the best of: 64x64x64 MatMul; 128x128x128 MatMul)")


def test_time_axis_counts_as_voxels(tmp_path):
    path = tmp_path / "stack.onnx"
    conv_stack(path, ndim=2, layers=3, channels=4)
    per_frame = count_flops(path, (4, 1, 32, 32))  # 4 frames folded into the batch
    as_btcyx = count_flops(path, (4, 1, 32, 32), output_axes="tcyx")
    assert as_btcyx.output_voxels == per_frame.output_voxels == 4 * 32 * 32
    assert as_btcyx.flops_per_voxel == pytest.approx(2 * 216)
