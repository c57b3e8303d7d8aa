"""backend='auto': TensorRT engine on a GPU, then ORT CUDA, then OpenVINO on x86, then ORT CPU, with reasons."""

from __future__ import annotations

import logging

import pytest

from scopert.errors import BackendError
from scopert.runtime import load
from scopert.runtime.backends.choice import Environment, choose
from tests.runtime.graphs import conv_stack

CPU_X86 = Environment(machine="x86_64", openvino=True, ort=True, ort_providers=("CPUExecutionProvider",))


def test_order_of_choices(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"")
    gpu = Environment("x86_64", True, True, ("CUDAExecutionProvider", "CPUExecutionProvider"), True, "NVIDIA H100")
    assert choose(onnx_path, env=gpu).backend == "ort" and choose(onnx_path, env=gpu).device == "cuda"
    (tmp_path / "m.engine").write_bytes(b"")
    c = choose(onnx_path, env=gpu)
    assert (c.backend, c.device) == ("trt", "cuda") and "m.engine" in c.reason
    assert choose(onnx_path, device="cpu", env=gpu).backend == "openvino"
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


def test_every_run_logs_backend_precision_and_why(tmp_path, caplog):
    pytest.importorskip("openvino")
    path = tmp_path / "c.onnx"
    conv_stack(path, ndim=2)
    with caplog.at_level(logging.INFO):
        model = load(path)
    text = " ".join(r.getMessage() for r in caplog.records)
    if choose(path).backend == "openvino":
        assert model.backend.info.name == "openvino"
        assert "backend auto: openvino on cpu, precision fp32" in text and "chosen because" in text
