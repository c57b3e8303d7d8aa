"""The TensorRT backend's buffers, shapes, overlap and engine checks against fake tensorrt and CUDA."""

from __future__ import annotations

import numpy as np
import pytest

from scopert.card import sidecar_path
from scopert.errors import BackendError, CardError, InputError
from scopert.export.trt_builder import build_engine
from scopert.runtime.backends.engine_key import GpuInfo
from scopert.runtime.backends.trt import TrtBackend
from tests.fakes.fake_cuda import FakeCuda
from tests.fakes.fake_tensorrt import make_fake_tensorrt
from tests.runtime.graphs import conv_stack


@pytest.fixture()
def engine(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    conv_stack(onnx_path, ndim=3)
    cuda = FakeCuda()
    trt = make_fake_tensorrt("11.4.0.106", cuda=cuda)
    res = build_engine(onnx_path, (4, 16, 16), 2, out_dir=tmp_path / "engines", trt=trt,
                       gpu=GpuInfo(cuda.name, "9.0", trt.__version__))
    return res.engine_path, trt, cuda


def _tiles(data_dir, n, shape=(2, 1, 4, 16, 16)):
    import tifffile

    vol = tifffile.imread(str(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif"))[:4, :64, :64].astype(np.float32) / 255
    out = []
    for i in range(n):
        y, x = 16 * (i % 4), 16 * ((i // 4) % 4)
        tile = vol[:, y:y + 16, x:x + 16]
        out.append(np.broadcast_to(tile, shape).copy() * (1 + 0.1 * i))
    return out


def test_run_buffers_shapes_and_double_buffering(engine, data_dir):
    path, trt, cuda = engine
    backend = TrtBackend(path, trt=trt, cuda=cuda)
    assert backend.info.name == "trt" and backend.input_name == "input" and backend.output_name == "output"
    assert len(backend._slots) == 2
    contexts = trt.recorder.named("create_execution_context")
    assert len(contexts) == 2  # one execution context per in-flight batch
    max_bytes = 2 * 1 * 4 * 16 * 16 * 4
    assert cuda.calls.count(("malloc_host", max_bytes)) == 4 and cuda.calls.count(("malloc", max_bytes)) == 4
    batches = _tiles(data_dir, 5)
    batches.append(batches[0][:1, :, :2, :8, :12].copy())  # a smaller edge batch inside the profile
    outs = list(backend.run_many(batches))
    for b, o in zip(batches, outs):
        assert o.shape == b.shape and np.allclose(o, 2 * b + 1)
    assert cuda.max_inflight_streams == 2  # batch k+1 enqueued (H2D) while batch k is still in flight
    shapes = [c for c in trt.recorder.named("set_input_shape")]
    assert shapes[-1] == ("set_input_shape", "input", (1, 1, 2, 8, 12))
    streams = [c[1] for c in trt.recorder.named("execute_async_v3")]
    assert streams[:4] == [1, 2, 1, 2]  # each slot on its own stream, never stream 0
    single = backend.run(batches[1])
    assert np.allclose(single, 2 * batches[1] + 1)
    backend.close()
    assert not cuda.pinned


def test_tile_beyond_profile_fails_before_cuda(engine):
    path, trt, cuda = engine
    backend = TrtBackend(path, trt=trt, cuda=cuda)
    n = len(cuda.calls)
    with pytest.raises(InputError, match=r"outside the engine's optimization profile.*max \(2, 1, 4, 16, 16\)"):
        backend.run(np.zeros((1, 1, 4, 32, 16), np.float32))
    with pytest.raises(InputError, match="outside"):
        backend.run(np.zeros((3, 1, 4, 16, 16), np.float32))
    assert len(cuda.calls) == n


def test_foreign_engine_is_refused_before_deserialization(engine):
    path, trt, _ = engine
    other = FakeCuda(name="NVIDIA GeForce RTX 4090", cc=(8, 9))
    with pytest.raises(BackendError, match=r"built for NVIDIA H100.*9\.0.*RTX 4090.*rebuild it here"):
        TrtBackend(path, trt=trt, cuda=other)
    trt12 = make_fake_tensorrt("11.5.0.1", cuda=FakeCuda())
    with pytest.raises(BackendError, match=r"TensorRT 11\.4\.0\.106.*11\.5\.0\.1"):
        TrtBackend(path, trt=trt12, cuda=FakeCuda())
    assert trt.recorder.named("deserialize_cuda_engine") == [] and trt12.recorder.named("deserialize_cuda_engine") == []


def test_corrupt_engine_and_missing_card(engine):
    path, trt, cuda = engine
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt"):
        TrtBackend(path, trt=trt, cuda=cuda)
    path.write_bytes(data)
    sidecar_path(path).unlink()
    with pytest.raises(CardError, match="no sidecar card.*scopert build"):
        TrtBackend(path, trt=trt, cuda=cuda)


@pytest.mark.gpu
def test_real_engine_runs(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    conv_stack(onnx_path, ndim=3)
    res = build_engine(onnx_path, (4, 16, 16), 2, out_dir=tmp_path)
    backend = TrtBackend(res.engine_path)
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 4, 16, 16)).astype(np.float32)
    assert backend.run(x).shape == x.shape


class _PointwiseCpu:
    """A synchronous backend computing what the fake engine computes (2x + 1), for a reference run."""

    def __init__(self, trt_backend: TrtBackend) -> None:
        self.info, self.metadata = trt_backend.info, {}
        self.input_name, self.output_name = trt_backend.input_name, trt_backend.output_name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return 2 * batch + 1


def test_tiled_prediction_keeps_both_slots_in_flight(tmp_path, data_dir):
    import tifffile

    from scopert.runtime.model import Model

    onnx_path = tmp_path / "m.onnx"
    conv_stack(onnx_path, ndim=3)  # halo 3
    cuda = FakeCuda()
    trt = make_fake_tensorrt("11.4.0.106", cuda=cuda)
    path = build_engine(onnx_path, (8, 16, 16), 2, out_dir=tmp_path / "engines", trt=trt,
                        gpu=GpuInfo(cuda.name, "9.0", trt.__version__)).engine_path
    backend = TrtBackend(path, trt=trt, cuda=cuda)
    assert backend.max_in_flight == 2
    vol = tifffile.imread(str(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif"))[:12, :40, :56]
    model = Model(backend, backend.card, path)
    out = model.predict(vol, tile=(8, 16, 16), batch=2, stitch="crop")
    assert cuda.max_inflight_streams == 2  # the pipeline submits batch k+1 before it collects batch k
    executed = len(trt.recorder.named("execute_async_v3"))
    assert executed == model.last_stats.batches > 2
    reference = Model(_PointwiseCpu(backend), backend.card, path).predict(vol, tile=(8, 16, 16), batch=2, stitch="crop")
    assert out.shape == vol.shape and np.array_equal(out, reference)  # same tiles, same order, same stitching
    backend.close()
