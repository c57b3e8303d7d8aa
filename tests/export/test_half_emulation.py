"""The torch evaluator of ONNX graphs: equal to ONNX Runtime in FP32, FP16 storage in FP16, clear limits."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from scopert.export.half_emulation import NotEmulated, run_graph


class ManyOps(nn.Module):
    """Conv (asymmetric pad), transposed conv, reflect pad, instance norm, pooling, resize, attention, GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.norm = nn.InstanceNorm2d(4, affine=True)
        self.bn = nn.BatchNorm2d(4).eval()
        self.c2 = nn.Conv2d(4, 2, 3, dilation=2, padding=2, groups=2)

    def forward(self, x):
        a = torch.relu(self.c1(nn.functional.pad(x, (0, 1, 1, 0), mode="reflect")[..., :-1, 1:]))
        a = nn.functional.max_pool2d(a, 2)
        b = self.bn(self.norm(self.up(a)))
        b = nn.functional.interpolate(nn.functional.avg_pool2d(b, 2), scale_factor=2.0, mode="bilinear")
        q = b.flatten(2)  # attention over channels
        w = torch.softmax(q @ q.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        b = (w @ q).reshape(b.shape) + b.mean(dim=(2, 3), keepdim=True)
        y = self.c2(nn.functional.gelu(b)) + torch.sigmoid(x) * torch.tanh(x)
        return nn.functional.interpolate(y, scale_factor=2.0) [..., ::2, ::2] - torch.sqrt(x.abs() + 1) ** 2


def _export(module: nn.Module, shape) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.manual_seed(0)
    torch.onnx.export(module.eval(), torch.zeros(shape), buf, input_names=["input"], output_names=["output"],
                      opset_version=17, dynamic_axes={"input": {2: "y", 3: "x"}}, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def test_fp32_graph_equals_onnx_runtime():
    torch.manual_seed(0)
    model = _export(ManyOps(), (1, 2, 32, 32))
    x = np.random.default_rng(0).normal(size=(1, 2, 24, 40)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = run_graph(model, {"input": x})[0]
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.max(np.abs(got - ref)) < 1e-4


def _scale_graph(dtype: int, scale: float) -> onnx.ModelProto:
    """input -> Cast(dtype) -> x scale -> + itself -> Cast(float): overflows in FP16 for scale 1e5."""
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    nodes = [helper.make_node("Cast", ["input"], ["a"], to=dtype, name="to_low"),
             helper.make_node("Mul", ["a", "k"], ["b"], name="scale"),
             helper.make_node("Add", ["b", "b"], ["c"], name="sum"),
             helper.make_node("Cast", ["c"], ["output"], to=TensorProto.FLOAT, name="to_fp32")]
    graph = helper.make_graph(nodes, "scale", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.array(scale, np_dtype), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_fp16_tensors_round_and_overflow_as_on_a_gpu():
    x = np.array([[0.1, 0.3, 1.0, 4.0]], np.float32)
    got = run_graph(_scale_graph(TensorProto.FLOAT16, 1e4), {"input": x})[0]
    assert np.isinf(got[0, 3]) and np.isfinite(got[0, :3]).all()  # 4e4 + 4e4 > 65504: inf in FP16
    # ORT CPU hides it: it computes FP16 nodes in FP32
    ort_out = ort.InferenceSession(_scale_graph(TensorProto.FLOAT16, 1e4).SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.isfinite(ort_out[0, 3])
    small = run_graph(_scale_graph(TensorProto.FLOAT16, 3.0), {"input": x})[0]
    exact = x * 3.0 * 2
    assert np.allclose(small, exact, rtol=1e-3) and not np.array_equal(small, exact)  # float16 rounding shows
    assert np.array_equal(run_graph(_scale_graph(TensorProto.FLOAT, 3.0), {"input": x})[0], exact)


def test_an_operator_it_does_not_cover_is_named():
    nodes = [helper.make_node("Det", ["input"], ["output"], name="determinant")]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(NotEmulated, match="operator Det \\(node 'determinant'\\)"):
        run_graph(model, {"input": np.eye(2, dtype=np.float32)})
