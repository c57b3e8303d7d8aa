"""Model.stream for acquisition: order in block mode, exact drop counts in drop mode, sliding windows."""

from __future__ import annotations

import time

import numpy as np
import pytest

from scopert.errors import InputError
from scopert.runtime import load
from tests.runtime.graphs import conv_stack


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.onnx"
    conv_stack(path, ndim=2, layers=1, channels=1)
    return load(path)


def test_block_mode_keeps_all_frames_in_order(tiny_model):
    frames = [np.full((16, 16), float(i), np.float32) + np.eye(16, dtype=np.float32) for i in range(1000)]
    expected_first = tiny_model.predict(frames[0], stitch="crop")
    outs = list(tiny_model.stream(frames, on_full="block", max_queue=4, stitch="crop"))
    stats = tiny_model.last_stream.stats
    assert len(outs) == 1000 and stats.dropped == 0 and stats.produced == 1000
    np.testing.assert_allclose(outs[0], expected_first, atol=1e-6)
    # Order: frame i was offset by i; the model is linear in a constant offset up to its bias path,
    # so compare each output with the frame's own offline prediction for a sample of frames.
    for i in (1, 499, 999):
        np.testing.assert_allclose(outs[i], tiny_model.predict(frames[i], stitch="crop"), atol=1e-5)


def test_drop_mode_counts_exactly(tiny_model):
    def camera():
        for i in range(1000):
            yield np.full((64, 64), float(i % 7), np.float32)

    stream = tiny_model.open_stream(on_full="drop", max_queue=2, stitch="crop")
    outs = list(stream.run(camera()))
    st = stream.stats
    assert st.received == 1000
    assert st.dropped > 0, "a producer far faster than the model must overflow a queue of 2"
    assert st.accepted + st.dropped == 1000
    assert len(outs) == st.accepted == st.produced


def test_push_api_and_latency(tiny_model):
    stream = tiny_model.open_stream(on_full="block", max_queue=4, stitch="crop")
    for i in range(20):
        assert stream.push(np.full((32, 32), float(i), np.float32))
        time.sleep(0.001)
    stream.close()
    outs = list(stream.results())
    assert len(outs) == 20
    assert stream.stats.latency_percentile(50) > 0


def _centre_model(tmp_path, window=5):
    """A model over a window of frames ('btyx' in) that returns its centre frame ('bcyx' out)."""
    import onnx
    from onnx import TensorProto, helper

    from scopert.card import ModelCard, Normalization, TensorSpec

    half = window // 2
    node = helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["output"])
    inits = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
             (("starts", half), ("ends", half + 1), ("axes", 1))]
    graph = helper.make_graph([node], "centre", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                 ["b", window, "y", "x"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard("test", "centre", TensorSpec("input", "btyx", time_window=window),
                     TensorSpec("output", "bcyx"), halo={"y": 0, "x": 0}, tile_invariant=True,
                     normalization=Normalization(kind="none"))
    card.embed(model)
    path = tmp_path / "centre.onnx"
    onnx.save(model, str(path))
    return load(path)


def test_centre_frame_stream_matches_offline_and_mirrors(tmp_path):
    model = _centre_model(tmp_path)
    movie = np.stack([np.full((8, 8), float(i), np.float32) for i in range(9)])
    offline = model.predict(movie)
    live = np.stack(list(model.stream(list(movie))))
    np.testing.assert_array_equal(offline, live)
    np.testing.assert_array_equal(live[:, 0, 0], np.arange(9, dtype=np.float32))
    assert model.frame_window(9, 0) == [2, 1, 0, 1, 2]
    assert model.frame_window(9, 8) == [6, 7, 8, 7, 6]


def test_fewer_frames_than_window_is_a_clear_error(tmp_path):
    model = _centre_model(tmp_path)
    with pytest.raises(InputError, match="fewer than the model's time window"):
        list(model.stream([np.zeros((8, 8), np.float32)] * 3))


def test_latency_record_is_bounded():
    """A stream that runs for days keeps the latencies of the last LATENCY_WINDOW outputs only."""
    from scopert.runtime.stream import LATENCY_WINDOW, StreamStats

    stats = StreamStats()
    for i in range(LATENCY_WINDOW + 500):
        stats.latencies.append(float(i))
    assert len(stats.latencies) == LATENCY_WINDOW
    assert stats.latency_percentile(0) == 500.0  # the oldest 500 were let go
