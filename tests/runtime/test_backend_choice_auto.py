"""backend='auto': the engine `scopert build` wrote (keyed by model, GPU and TensorRT version), then ORT CUDA, then
OpenVINO on x86, then ORT CPU, with reasons; and one backend contract and registry."""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pytest

from scopert.errors import BackendError
from scopert.runtime import load
from scopert.runtime.backends import base
from scopert.runtime.selection import choice
from scopert.runtime.selection.choice import Environment, choose
from tests.runtime.graphs import conv_stack

CPU_X86 = Environment(machine="x86_64", openvino=True, ort=True, ort_providers=("CPUExecutionProvider",))
H100 = "NVIDIA H100 80GB HBM3"
TRT11 = "11.4.0.106"
GPU = Environment("x86_64", True, True, ("CUDAExecutionProvider", "CPUExecutionProvider"), True, H100, "9.0", TRT11)


def _rig():
    from tests.runtime.test_trt_backend_fake import Rig

    return Rig(TRT11, name=H100, cc=(9, 0))


def test_order_of_choices(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    conv_stack(onnx_path, ndim=3)
    assert choose(onnx_path, env=GPU).backend == "ort" and choose(onnx_path, env=GPU).device == "cuda"
    (tmp_path / "m.engine").write_bytes(b"")  # the old rule's name, with no card: not an engine build wrote
    assert choose(onnx_path, env=GPU).backend == "ort"
    engine = _rig().build(onnx_path, (8, 16, 16), 2, tmp_path / "engines").engine_path
    c = choose(onnx_path, env=GPU)
    assert (c.backend, c.device, c.engine_path) == ("trt", "cuda", engine) and engine.name in c.reason
    assert choose(onnx_path, device="cpu", env=GPU).backend == "openvino"
    c = choose(tmp_path / "x.onnx", env=CPU_X86)
    assert (c.backend, c.device) == ("openvino", "cpu") and "no GPU" in c.reason
    arm = Environment("aarch64", True, True, ("CPUExecutionProvider",))
    c = choose(tmp_path / "x.onnx", env=arm)
    assert c.backend == "ort" and "aarch64" in c.reason
    no_ov = Environment("x86_64", False, True, ("CPUExecutionProvider",))
    c = choose(tmp_path / "x.onnx", env=no_ov)
    assert c.backend == "ort" and "OpenVINO not installed" in c.reason
    with pytest.raises(BackendError, match="--device cuda"):
        choose(tmp_path / "x.onnx", device="cuda", env=CPU_X86)


@pytest.mark.parametrize("other", [dataclasses.replace(GPU, gpu="NVIDIA A100-SXM4-80GB", compute_capability="8.0"),
                                   dataclasses.replace(GPU, trt_version="10.16.1.11")], ids=["another-card", "another-trt"])
def test_engine_for_another_gpu_or_trt_is_passed_over_with_the_reason(tmp_path, other, caplog):
    onnx_path = tmp_path / "m.onnx"
    conv_stack(onnx_path, ndim=3)
    engine = _rig().build(onnx_path, (8, 16, 16), 1, tmp_path / "engines").engine_path
    before = sorted(os.listdir(tmp_path / "engines"))
    with caplog.at_level(logging.WARNING):
        c = choose(onnx_path, env=other)
    assert c.backend == "ort" and engine.name in " ".join(c.skipped) and "scopert build" in caplog.text
    assert ("A100" in c.reason) if other.gpu != H100 else ("TensorRT 11.4.0.106, not 10.16.1.11" in c.reason)
    assert sorted(os.listdir(tmp_path / "engines")) == before  # nothing written


def test_engine_of_another_model_version_is_not_used(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    conv_stack(onnx_path, ndim=3, seed=0)
    _rig().build(onnx_path, (8, 16, 16), 1, tmp_path / "engines")
    conv_stack(onnx_path, ndim=3, seed=1)  # re-exported: new weights, same name
    c = choose(onnx_path, env=GPU)
    assert c.backend == "ort" and "another version of m.onnx" in c.reason


def test_build_then_apply_auto_runs_the_engine(tmp_path, monkeypatch, data_dir):
    """`scopert build`, then `load(model.onnx)` with auto: the TensorRT backend runs the built engine."""
    import sys

    import tifffile

    from scopert.runtime.backends.cuda_adapter import CudaRuntime
    from tests.fakes.fake_tensorrt import reference_kernel

    onnx_path = tmp_path / "m.onnx"
    conv_stack(onnx_path, ndim=3)
    rig = _rig()
    monkeypatch.chdir(tmp_path)  # build's default store: ./engines
    engine = rig.build(onnx_path, (8, 16, 16), 2, "engines").engine_path
    monkeypatch.setitem(sys.modules, "tensorrt", rig.trt)
    monkeypatch.setattr(CudaRuntime, "load", classmethod(lambda cls, cudart=None: rig.cuda))
    monkeypatch.setattr(choice, "probe_environment", lambda: GPU)
    vol = tifffile.imread(str(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif"))[:8, :40, :40].astype(np.float32)
    vol /= 255
    with load(onnx_path) as model:
        assert model.backend.info.name == "trt" and engine.name in model.backend.info.reason
        out = model.predict(vol)
        backend = model.backend
    assert len(rig.trt.recorder.named("execute_async_v3")) > 0
    assert backend._closed and not rig.rt.device_mem and not rig.rt.pinned  # Model closed what it opened
    ref = reference_kernel(vol[None, None], 1, (1, 1, 1))[0, 0]
    assert np.max(np.abs(np.squeeze(out) - ref)) < 1e-4


def test_every_run_logs_backend_precision_and_why(tmp_path, caplog):
    pytest.importorskip("openvino")
    path = tmp_path / "c.onnx"
    conv_stack(path, ndim=2)
    with caplog.at_level(logging.INFO):
        model = load(path)
    text = " ".join(r.getMessage() for r in caplog.records)
    if choose(path).backend == "openvino":  # then the measured choice (issue 16) picks ORT or OpenVINO by speed
        assert model.backend.info.name in ("openvino", "ort")
        assert f"backend auto: {model.backend.info.name} on cpu, precision fp32" in text and "chosen because" in text


def test_one_contract_and_one_registry(tmp_path):
    """Every registered backend is a Backend with the whole contract; --backend choices come from the registry."""
    from click.testing import CliRunner

    from scopert.cli import cli

    assert base.backend_choices() == ("auto", "ort", "openvino", "trt")
    for entry in base.REGISTRY.values():
        opener = entry.load_opener()
        assert callable(opener)
        if isinstance(opener, type):
            assert issubclass(opener, base.Backend)
    path = tmp_path / "c.onnx"
    conv_stack(path, ndim=2)
    for name in ("ort", "openvino"):
        if name == "openvino":
            pytest.importorskip("openvino")
        with load(path, backend=name, device="cpu") as model:
            b = model.backend
            assert isinstance(b, base.Backend) and b.max_in_flight >= 1 and b.info.name in ("ort", "openvino")
            x = np.random.default_rng(0).random((1, 1, 16, 16), np.float32)
            assert np.array_equal(b.collect(b.submit(x)), b.run(x))
    m = load(path, backend="ort", device="cpu")
    m.close()
    m.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        m.backend.run(np.zeros((1, 1, 8, 8), np.float32))
    for command in (["apply"], ["bench"], ["stream"]):
        text = CliRunner().invoke(cli, [*command, "--help"]).output
        assert "[auto|ort|openvino|trt]" in text, command
    bad = CliRunner().invoke(cli, ["apply", "-m", str(path), "-i", str(path), "-o", str(tmp_path / "o.tif"),
                                   "--backend", "tensorflow"])
    assert bad.exit_code == 2 and "auto" in bad.output and "trt" in bad.output
