"""The TensorRT backend against fake ``tensorrt`` 10.x/11.x and a fake ``cuda.bindings.runtime``, through the real
cuda-python adapter: buffers, shapes, FP16 I/O, one profile per slot, blocking events, TF32, default tiles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scopert.card import sidecar_path
from scopert.errors import BackendError, CardError, InputError
from scopert.export.trt_builder import build_engine
from scopert.runtime.backends.base import Backend
from scopert.runtime.backends.cuda_adapter import CudaRuntime
from scopert.runtime.backends.engine_key import GpuInfo
from scopert.runtime.backends.trt import TrtBackend
from tests.fakes.fake_cudart import FakeCudaRuntimeModule
from tests.fakes.fake_tensorrt import make_fake_tensorrt, reference_kernel
from tests.runtime.graphs import conv_stack

TRT11, TRT10 = "11.4.0.106", "10.16.1.11"


class Rig:
    """A fake GPU (cuda.bindings.runtime), the real adapter on it, and a fake tensorrt executing on it."""

    def __init__(self, version: str = TRT11, name: str = "NVIDIA H100 80GB HBM3", cc=(9, 0), **trt_options) -> None:
        self.rt = FakeCudaRuntimeModule(name=name, cc=cc)
        self.cuda = CudaRuntime(self.rt)
        self.trt = make_fake_tensorrt(version, self.rt, device_name=name, **trt_options)
        self.gpu = GpuInfo(name, f"{cc[0]}.{cc[1]}", version)

    def build(self, onnx_path, tile, batch, out_dir, **kw):
        return build_engine(onnx_path, tile, batch, out_dir=out_dir, trt=self.trt, gpu=self.gpu, **kw)

    def backend(self, path, **kw) -> TrtBackend:
        return TrtBackend(path, trt=self.trt, cuda=self.cuda, **kw)


@pytest.fixture()
def rig_engine(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    conv_stack(onnx_path, ndim=3)
    rig = Rig()
    res = rig.build(onnx_path, (8, 16, 16), 2, tmp_path / "engines")
    return rig, res.engine_path


def _tiles(data_dir, n, shape=(2, 1, 8, 16, 16)):
    import tifffile

    vol = tifffile.imread(str(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif"))[:8, :64, :64].astype(np.float32) / 255
    out = []
    for i in range(n):
        y, x = 16 * (i % 4), 16 * ((i // 4) % 4)
        tile = vol[:, y:y + 16, x:x + 16]
        out.append(np.broadcast_to(tile, shape).copy() * np.float32(1 + 0.1 * i))
    return out


def test_run_buffers_shapes_and_double_buffering(rig_engine, data_dir):
    rig, path = rig_engine
    backend = rig.backend(path)
    assert backend.info.name == "trt" and backend.input_name == "input" and backend.output_name == "output"
    assert len(backend._slots) == 2 and len(rig.trt.recorder.named("create_execution_context")) == 2
    max_bytes = 2 * 1 * 8 * 16 * 16 * 4
    assert len(rig.rt.pinned) == 4 and len(rig.rt.device_mem) == 4
    assert all(ctypes_size(b) == max_bytes for b in rig.rt.device_mem.values())
    batches = _tiles(data_dir, 5)
    batches.append(batches[0][:1, :, :8, :8, :12].copy())  # a smaller edge batch inside the profile
    outs = list(backend.run_many(batches))
    for b, o in zip(batches, outs):
        assert o.shape == b.shape and np.allclose(o, reference_kernel(b, 1, (1, 1, 1)), rtol=1e-6)
    assert rig.rt.max_busy_streams == 2  # batch k+1 enqueued while batch k is still in flight
    assert rig.trt.recorder.named("set_input_shape")[-1] == ("set_input_shape", "input", (1, 1, 8, 8, 12))
    streams = [c[1] for c in rig.trt.recorder.named("execute_async_v3")]
    handles = [int(s.stream) for s in backend._slots]
    assert streams[:4] == handles * 2 and 0 not in streams  # each slot on its own stream, never stream 0
    assert rig.rt.pageable_copies == 0  # every async copy used pinned memory
    backend.close()
    assert not rig.rt.pinned and not rig.rt.device_mem and not rig.rt.streams and not rig.rt.events


def ctypes_size(buf) -> int:
    import ctypes

    return ctypes.sizeof(buf)


def test_each_slot_has_its_own_optimization_profile(rig_engine, data_dir):
    """Defect 4: concurrent contexts on profile 0 are undefined (the fake returns NaN, as it may on a GPU)."""
    rig, path = rig_engine
    card = json.loads(sidecar_path(path).read_text())["verification"]["trt_engine"]
    assert card["profiles"] == 2 and card["key"]["profiles"] == 2
    assert len(rig.trt.recorder.named("add_optimization_profile")) == 2
    backend = rig.backend(path)
    chosen = [(c[1], c[2]) for c in rig.trt.recorder.named("set_optimization_profile_async")]
    assert chosen == [(0, int(backend._slots[0].stream)), (1, int(backend._slots[1].stream))]
    batches = _tiles(data_dir, 6)
    two = list(backend.run_many(batches))
    assert rig.rt.max_busy_streams == 2 and rig.trt.profile_conflicts == []
    one_rig = Rig()
    one = [one_rig.backend(path, slots=1).run(b) for b in batches]
    for a, b in zip(two, one):
        assert np.all(np.isfinite(a)) and np.array_equal(a, b)  # two slots in flight == one slot at a time


def test_an_engine_with_one_profile_runs_one_slot(tmp_path, data_dir, caplog):
    onnx_path = tmp_path / "m.onnx"
    conv_stack(onnx_path, ndim=3)
    rig = Rig()
    path = rig.build(onnx_path, (8, 16, 16), 2, tmp_path, slots=1).engine_path
    backend = rig.backend(path, slots=2)
    assert backend.max_in_flight == 1 and "1 optimization profile" in caplog.text
    outs = list(backend.run_many(_tiles(data_dir, 3)))
    assert rig.trt.profile_conflicts == [] and all(np.all(np.isfinite(o)) for o in outs)


def test_done_events_block_instead_of_spinning(rig_engine, data_dir):
    """Defect 5: collect() waits on cudaEventBlockingSync events, so the waiting thread sleeps."""
    rig, path = rig_engine
    backend = rig.backend(path)
    flags = {int(s.done): rig.rt.events[int(s.done)].flags for s in backend._slots}
    assert all(f & rig.rt.cudaEventBlockingSync for f in flags.values())
    list(backend.run_many(_tiles(data_dir, 4)))
    assert rig.rt.calls.count("cudaEventSynchronize") == 4 and rig.rt.spin_waits == 0


def test_fp32_engine_is_built_without_tf32_and_says_so(tmp_path, data_dir):
    """Defect 3: TF32 (TensorRT's default) rounds FP32 inputs to a 10-bit mantissa; ScopeRT clears it."""
    onnx_path = tmp_path / "m.onnx"
    conv_stack(onnx_path, ndim=3)
    x = _tiles(data_dir, 1)[0] * np.float32(1000.3)
    exact = reference_kernel(x, 1, (1, 1, 1))
    errors = {}
    for version in (TRT10, TRT11):
        rig = Rig(version)
        res = rig.build(onnx_path, (8, 16, 16), 2, tmp_path / version)
        assert ("clear_flag", "TF32") in rig.trt.recorder.calls and not res.key.tf32
        assert [c[2] for c in rig.trt.recorder.named("build")] == [False]  # the config held TF32 off at build time
        assert json.loads(sidecar_path(res.engine_path).read_text())["verification"]["trt_engine"]["tf32"] is False
        errors[version] = float(np.max(np.abs(rig.backend(res.engine_path).run(x) - exact) / np.abs(exact)))
        allowed = rig.build(onnx_path, (8, 16, 16), 2, tmp_path / version, tf32=True)
        assert allowed.key.tf32 and allowed.key.digest() != res.key.digest()  # an explicit, recorded choice
        errors[version + "-tf32"] = float(np.max(np.abs(rig.backend(allowed.engine_path).run(x) - exact) /
                                                 np.abs(exact)))
    assert errors[TRT10] < 1e-6 and errors[TRT11] < 1e-6
    assert errors[TRT10 + "-tf32"] > 1e-5 and errors[TRT11 + "-tf32"] > 1e-5  # what TF32 would have cost


def test_output_shape_and_fp16_io_come_from_the_engine(tmp_path, data_dir):
    """Outputs with other channels and scale (-1 before set_input_shape) and FP16 I/O tensors."""
    onnx_path = tmp_path / "up.onnx"
    conv_stack(onnx_path, ndim=3, cout=2, upsample=2)
    rig = Rig(TRT10, io_dtype="half")
    path = rig.build(onnx_path, (8, 16, 16), 2, tmp_path).engine_path
    backend = rig.backend(path)
    assert backend.in_dtype == np.float16 and backend.out_dtype == np.float16
    assert backend.engine.get_tensor_shape("output") == (-1, 2, -1, -1, -1)
    x = _tiles(data_dir, 1)[0][:1, :, :8, :12, :16]
    out = backend.run(x)
    assert out.dtype == np.float32 and out.shape == (1, 2, 16, 24, 32)
    want = reference_kernel(x.astype(np.float16), 2, (2, 2, 2))
    assert np.allclose(out, want, rtol=2e-3) and not np.array_equal(out, want.astype(np.float32))  # FP16 rounding


def test_tile_beyond_profile_fails_before_cuda(rig_engine):
    rig, path = rig_engine
    backend = rig.backend(path)
    n = len(rig.rt.calls)
    with pytest.raises(InputError, match=r"outside the engine's optimization profile.*max \(2, 1, 8, 16, 16\)"):
        backend.run(np.zeros((1, 1, 8, 32, 16), np.float32))
    with pytest.raises(InputError, match="outside"):
        backend.run(np.zeros((3, 1, 8, 16, 16), np.float32))
    with pytest.raises(InputError, match=r"min \(1, 1, 7, 7, 7\)"):  # round_up(2*halo+1, 1) with halo 3
        backend.run(np.zeros((1, 1, 6, 16, 16), np.float32))
    assert len(rig.rt.calls) == n


def test_foreign_engine_is_refused_before_deserialization(rig_engine):
    rig, path = rig_engine
    other = Rig(name="NVIDIA GeForce RTX 4090", cc=(8, 9))
    with pytest.raises(BackendError, match=r"built for NVIDIA H100.*9\.0.*RTX 4090.*rebuild it here"):
        TrtBackend(path, trt=rig.trt, cuda=other.cuda)
    newer = Rig("11.5.0.1")
    with pytest.raises(BackendError, match=r"TensorRT 11\.4\.0\.106.*11\.5\.0\.1"):
        newer.backend(path)
    assert rig.trt.recorder.named("deserialize_cuda_engine") == [] == newer.trt.recorder.named("deserialize_cuda_engine")


def test_corrupt_engine_missing_card_and_failing_runtime(rig_engine):
    rig, path = rig_engine
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt"):
        rig.backend(path)
    path.write_bytes(data)
    no_gpu = Rig(no_gpu=True)
    with pytest.raises(BackendError, match="could not start its runtime.*--backend ort"):
        no_gpu.backend(path)
    few = Rig(max_contexts=1)
    with pytest.raises(BackendError, match="could not create an execution context"):
        few.backend(path)
    assert not few.rt.pinned and not few.rt.device_mem  # the first slot's buffers were freed
    sidecar_path(path).unlink()
    with pytest.raises(CardError, match="no sidecar card.*scopert build"):
        rig.backend(path)


def test_cuda_driver_mismatch_is_named_when_the_backend_opens(rig_engine, monkeypatch):
    """Defect 2: a CUDA-13 cuda-python on a CUDA-12 driver is a mismatch, not 'no GPU'."""
    from scopert.runtime.backends import cuda_adapter

    rig, path = rig_engine
    monkeypatch.setattr(cuda_adapter, "import_cudart",
                        lambda: FakeCudaRuntimeModule(driver_version=12040, runtime_version=13000))
    with pytest.raises(BackendError, match=r"driver/runtime mismatch.*gpu-cu12"):
        TrtBackend(path, trt=rig.trt)


@pytest.mark.gpu
def test_real_engine_runs(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    conv_stack(onnx_path, ndim=3)
    res = build_engine(onnx_path, (8, 16, 16), 2, out_dir=tmp_path)
    backend = TrtBackend(res.engine_path)
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 8, 16, 16)).astype(np.float32)
    assert backend.run(x).shape == x.shape


class _ReferenceCpu(Backend):
    """A synchronous backend computing what the fake engine computes, for a reference run."""

    def __init__(self, trt_backend: TrtBackend) -> None:
        self.info, self.metadata = trt_backend.info, {}
        self.input_name, self.output_name = trt_backend.input_name, trt_backend.output_name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return reference_kernel(batch, 1, (1, 1, 1)).astype(np.float32)


def test_tiled_prediction_keeps_both_slots_in_flight(tmp_path, data_dir):
    import tifffile

    from scopert.runtime.model import Model

    onnx_path = tmp_path / "m.onnx"
    conv_stack(onnx_path, ndim=3)  # halo 3
    rig = Rig()
    path = rig.build(onnx_path, (8, 16, 16), 2, tmp_path / "engines").engine_path
    backend = rig.backend(path)
    assert backend.max_in_flight == 2
    vol = tifffile.imread(str(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif"))[:12, :40, :56]
    model = Model(backend, backend.card, path)
    out = model.predict(vol, tile=(8, 16, 16), batch=2, stitch="crop")
    assert rig.rt.max_busy_streams == 2 and rig.trt.profile_conflicts == []
    executed = len(rig.trt.recorder.named("execute_async_v3"))
    assert executed == model.last_stats.batches > 2
    reference = Model(_ReferenceCpu(backend), backend.card, path).predict(vol, tile=(8, 16, 16), batch=2,
                                                                         stitch="crop")
    assert out.shape == vol.shape and np.allclose(out, reference, rtol=1e-6, atol=1e-6)
    backend.close()


def test_default_tile_respects_the_engine_profile(tmp_path, data_dir):
    """Defect 6: without --tile, the card's default tile (here larger than the engine's) must not be sent."""
    import tifffile

    from scopert.runtime.model import Model

    onnx_path = tmp_path / "m.onnx"
    card = conv_stack(onnx_path, ndim=3)
    rig = Rig()
    path = rig.build(onnx_path, (8, 16, 16), 2, tmp_path / "engines").engine_path
    backend = rig.backend(path)
    backend.card.default_tile = {"z": 16, "y": 64, "x": 64}
    model = Model(backend, backend.card, path)
    assert model.default_tile({"z": 12, "y": 40, "x": 56}) == {"z": 8, "y": 16, "x": 16}
    vol = tifffile.imread(str(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif"))[:12, :40, :56]
    out = model.predict(vol, batch=2)
    assert out.shape == vol.shape and np.all(np.isfinite(out)) and card is not None
