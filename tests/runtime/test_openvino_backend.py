"""OpenVINO backend: same outputs as ONNX Runtime on real data, explicit f32, per-shape cache, two
requests in flight, unsupported op -> named + ORT fallback, a tile shape the model cannot take."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
from onnx import TensorProto, helper

from scopert.errors import InputError
from scopert.runtime import load
from scopert.runtime.selection import open_backend
from scopert.runtime.backends.openvino import OpenVinoBackend, UnsupportedOpError, onnx_metadata
from scopert.runtime.backends.ort import OrtBackend
from tests.runtime.graphs import conv_stack

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def model2d(tmp_path_factory):
    path = tmp_path_factory.mktemp("ov") / "conv2d.onnx"
    conv_stack(path, ndim=2, layers=3, channels=8)
    return path


@pytest.fixture(scope="module")
def tiles(data_dir):
    img = tifffile.imread(data_dir / "stardist_nuclei_2d" / "stardist_dsb2018_img2d.tif").astype(np.float32)
    img = (img - np.percentile(img, 1)) / (np.percentile(img, 99.8) - np.percentile(img, 1))
    return np.stack([img[None, :128, :128], img[None, 128:256, 200:328], img[None, 300:428, 300:428]])


def test_only_the_most_recent_tile_shapes_stay_compiled(model2d, tiles):
    """Each compiled shape holds its requests' activations; a long-lived process that meets many shapes (napari,
    a folder of files) keeps the last ``COMPILED_SHAPES`` and drops the oldest, results unchanged."""
    from scopert.runtime.backends.openvino import COMPILED_SHAPES

    ov_b = OpenVinoBackend(model2d, threads=2)
    first = ov_b.run(tiles[:1, :, :64, :64])
    for size in (48, 56, 72):
        ov_b.run(tiles[:1, :, :size, :size])
    assert COMPILED_SHAPES == 3 and ov_b.compiled_shapes() == [(1, 1, s, s) for s in (48, 56, 72)]
    ov_b.run(tiles[:1, :, :56, :56])  # used again: now the most recent, so 48 goes next
    ov_b.run(tiles[:1, :, :64, :64])
    assert ov_b.compiled_shapes() == [(1, 1, s, s) for s in (56, 64, 72)]
    np.testing.assert_array_equal(ov_b.run(tiles[:1, :, :64, :64]), first)


def test_openvino_matches_ort_on_real_tiles(model2d, tiles):
    ov_b = OpenVinoBackend(model2d, threads=2)
    ort_b = OrtBackend(model2d, device="cpu", threads=2)
    got, ref = ov_b.run(tiles), ort_b.run(tiles)
    assert got.shape == ref.shape == (3, 1, 128, 128)
    assert np.abs(got - ref).max() < 1e-4
    assert ov_b.info.precision == "fp32"
    assert ov_b.config == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"}
    # three samples, one compiled shape (batch 1), every op in f32: never bf16 by default
    assert ov_b.compiled_shapes() == [(1, 1, 128, 128)]
    counts = ov_b.runtime_precisions((1, 1, 128, 128))
    assert counts.get("bf16", 0) == 0 and counts["f32"] > 0
    assert ov_b.metadata == ort_b.metadata and "scopert.card" in onnx_metadata(model2d)


def test_submit_collect_keeps_two_in_flight(model2d, tiles):
    b = OpenVinoBackend(model2d, threads=2)
    first = b.submit(tiles[:2])
    out_first = b.collect(first)
    second = b.submit(tiles[2:])
    out_second = b.collect(second)
    assert np.allclose(out_first, b.run(tiles[:2]))
    assert np.allclose(out_second, b.run(tiles[2:]))
    assert len(b._cache[(1, 1, 128, 128)].requests) == 2


def test_load_openvino_predicts_like_ort(model2d, data_dir):
    img = tifffile.imread(data_dir / "stardist_nuclei_2d" / "stardist_dsb2018_img2d.tif")
    a = load(model2d, backend="openvino").predict(img, tile=128)
    b = load(model2d, backend="ort", device="cpu").predict(img, tile=128)
    assert a.shape == img.shape
    assert np.abs(a - b).max() < 1e-4


def _unsupported_model(path):
    nodes = [helper.make_node("Scaler", ["input"], ["output"], domain="ai.onnx.ml", scale=[2.0], offset=[0.5])]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", "c", "h", "w"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    m.ir_version = 8
    import onnx

    onnx.save(m, str(path))


def test_unsupported_op_is_named_and_falls_back_to_ort(tmp_path, caplog):
    path = tmp_path / "scaler.onnx"
    _unsupported_model(path)
    with pytest.raises(UnsupportedOpError, match="Scaler"):
        OpenVinoBackend(path)
    with caplog.at_level(logging.WARNING):
        b = open_backend(path, backend="openvino")
    assert b.info.name == "ort" and "Scaler" in b.info.reason
    assert any("Scaler" in r.message and "falling back" in r.message for r in caplog.records)
    x = np.full((1, 1, 4, 4), 3.0, np.float32)
    assert np.allclose(b.run(x), 2.0 * (3.0 - 0.5))  # ml.Scaler: (x - offset) * scale


def _pool_concat_model(path):
    """MaxPool /2, upsample x2, concat with the input: odd tile sizes cannot be concatenated."""
    nodes = [helper.make_node("MaxPool", ["input"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["p", "", "sc"], ["u"], mode="nearest"),
             helper.make_node("Concat", ["input", "u"], ["output"], axis=1)]
    sc = helper.make_tensor("sc", TensorProto.FLOAT, [4], [1.0, 1.0, 2.0, 2.0])
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 1, "h", "w"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], [sc])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    import onnx

    onnx.save(m, str(path))


def test_tile_shape_the_model_cannot_take(tmp_path):
    path = tmp_path / "poolcat.onnx"
    _pool_concat_model(path)
    b = OpenVinoBackend(path)
    assert b.run(np.ones((1, 1, 64, 64), np.float32)).shape == (1, 2, 64, 64)
    with pytest.raises(InputError, match=r"cannot take a tile of shape \(63, 64\).*divisor"):
        b.run(np.ones((1, 1, 63, 64), np.float32))
    with pytest.raises(InputError, match="axes"):
        b.run(np.ones((1, 64, 64), np.float32))
