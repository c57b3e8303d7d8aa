"""Evaluate a strongly typed ONNX graph with torch, every tensor in the dtype the graph gives it.

ONNX Runtime's CPU provider upcasts FP16 nodes and computes them in FP32, so its output hides what a GPU
sees: FP16 storage of every intermediate, its rounding and its overflow to inf. torch on the CPU keeps
float16 tensors in float16, so running the graph node by node with torch ops (the torch ``.half()``
emulation) predicts what TensorRT's FP16 kernels produce. The operators covered are those ScopeRT's
families export; any other one raises :class:`NotEmulated`, and the caller reports the emulation as not run.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


class NotEmulated(Exception):
    """The graph holds something the emulation does not cover (names the node and the operator)."""


def run_graph(model: Any, feeds: dict[str, np.ndarray], store_floats_as: str | None = None) -> list[np.ndarray]:
    """The graph outputs of ``model`` (an onnx.ModelProto) for ``feeds``, evaluated node by node in torch.

    ``store_floats_as='bfloat16'`` rounds every float32 weight, input and intermediate to bfloat16: a
    pessimistic stand-in for a bf16 CPU plugin (OpenVINO keeps some ops in f32), for CPUs without bf16.
    Outputs come back as float32.
    """
    import torch
    from onnx import numpy_helper

    ops = _ops()
    low = {None: None, "bfloat16": torch.bfloat16, "float16": torch.float16}[store_floats_as]

    def stored(t: Any) -> Any:
        return t.to(low) if low is not None and t.dtype == torch.float32 else t

    values: dict[str, Any] = {}
    for init in model.graph.initializer:
        values[init.name] = stored(torch.from_numpy(np.array(numpy_helper.to_array(init))))
    for name, arr in feeds.items():
        values[name] = stored(torch.from_numpy(np.ascontiguousarray(arr)))
    with torch.inference_mode():
        for node in model.graph.node:
            fn = ops.get(node.op_type)
            if fn is None:
                raise NotEmulated(f"operator {node.op_type} (node {node.name!r}) is not emulated")
            args = [values[i] if i else None for i in node.input]
            try:
                outs = fn(args, _attributes(node))
            except NotEmulated as exc:
                raise NotEmulated(f"node {node.name!r} ({node.op_type}): {exc}") from None
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            for name, value in zip(node.output, outs):
                values[name] = stored(value)
    return [_to_numpy(values[o.name]) for o in model.graph.output]


def _to_numpy(t: Any) -> np.ndarray:
    import torch

    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# ---- operators -------------------------------------------------------------------------------------------
def _text(at: dict, key: str, default: str) -> str:
    """A string attribute (onnx gives bytes)."""
    value = at.get(key, default)
    return value.decode() if isinstance(value, bytes) else value


def _ints(t: Any) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _dtype(onnx_type: int) -> Any:
    import torch
    from onnx import TensorProto

    table = {TensorProto.FLOAT: torch.float32, TensorProto.FLOAT16: torch.float16, TensorProto.DOUBLE: torch.float64,
             TensorProto.INT64: torch.int64, TensorProto.INT32: torch.int32, TensorProto.BOOL: torch.bool,
             TensorProto.UINT8: torch.uint8, TensorProto.INT8: torch.int8}
    if onnx_type not in table:
        raise NotEmulated(f"element type {onnx_type} is not emulated")
    return table[onnx_type]


def _constant(args: list, at: dict) -> Any:
    import torch
    from onnx import numpy_helper

    if "value" in at:
        return torch.from_numpy(np.array(numpy_helper.to_array(at["value"])))
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in at:
            return torch.from_numpy(np.array(at[key], dtype=dtype))
    raise NotEmulated(f"Constant with attributes {sorted(at)}")


def _symmetric(pads: list[int], n: int) -> list[int]:
    begin, end = pads[:n], pads[n:]
    if begin != end:
        raise NotEmulated(f"asymmetric pads {pads}")
    return begin


def _conv(args: list, at: dict) -> Any:
    import torch.nn.functional as F

    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    n = w.dim() - 2
    if _text(at, "auto_pad", "NOTSET") != "NOTSET":
        raise NotEmulated("auto_pad")
    pads = list(at.get("pads", [0] * 2 * n))
    if pads[:n] != pads[n:]:  # explicit asymmetric padding: pad first, convolve unpadded
        x = F.pad(x, [p for i in reversed(range(n)) for p in (pads[i], pads[n + i])])
        pads = [0] * 2 * n
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return conv(x, w, b, stride=at.get("strides", [1] * n), padding=pads[:n], dilation=at.get("dilations", [1] * n),
                groups=at.get("group", 1))


def _conv_transpose(args: list, at: dict) -> Any:
    import torch.nn.functional as F

    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    n = w.dim() - 2
    if "output_shape" in at or _text(at, "auto_pad", "NOTSET") != "NOTSET":
        raise NotEmulated("output_shape / auto_pad")
    pads = list(at.get("pads", [0] * 2 * n))
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
    y = conv(x, w, b, stride=at.get("strides", [1] * n), output_padding=at.get("output_padding", [0] * n),
             groups=at.get("group", 1), dilation=at.get("dilations", [1] * n))
    index = [slice(None), slice(None)] + [slice(pads[i], y.shape[2 + i] - pads[n + i]) for i in range(n)]
    return y[tuple(index)]


def _pool(kind: str) -> Callable:
    def run(args: list, at: dict) -> Any:
        import torch.nn.functional as F

        x = args[0]
        k = list(at["kernel_shape"])
        n = len(k)
        pads = _symmetric(list(at.get("pads", [0] * 2 * n)), n)
        stride = at.get("strides", [1] * n)
        ceil = bool(at.get("ceil_mode", 0))
        if kind == "max":
            if at.get("dilations", [1] * n) != [1] * n:
                raise NotEmulated("dilated MaxPool")
            return {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n](x, k, stride, pads, ceil_mode=ceil)
        return {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n](
            x, k, stride, pads, ceil_mode=ceil, count_include_pad=bool(at.get("count_include_pad", 0)))
    return run


def _reduce(fn_name: str) -> Callable:
    def run(args: list, at: dict) -> Any:
        x = args[0]
        axes = at.get("axes")
        if axes is None and len(args) > 1 and args[1] is not None:
            axes = _ints(args[1])
        keep = bool(at.get("keepdims", 1))
        if not axes:
            if at.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        if fn_name == "max":
            out = x
            for a in sorted((a % x.dim() for a in axes), reverse=True):
                out = out.amax(dim=a, keepdim=keep)
            return out
        return getattr(x, fn_name)(dim=tuple(axes), keepdim=keep)
    return run


def _reshape(args: list, at: dict) -> Any:
    x, shape = args[0], _ints(args[1])
    if not at.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _shape(args: list, at: dict) -> Any:
    import torch

    dims = list(args[0].shape)
    start, end = at.get("start", 0), at.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64)


def _slice(args: list, at: dict) -> Any:
    import torch

    x = args[0]
    starts, ends = _ints(args[1]), _ints(args[2])
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        size = x.shape[a]
        s, e = (s + size if s < 0 else s), (e + size if e < 0 else e)
        if st > 0:
            s, e = min(max(s, 0), size), min(max(e, 0), size)
        else:  # ONNX: a negative step runs from start down to end, exclusive
            s, e = min(max(s, 0), size - 1), min(max(e, -1), size - 1)
        x = x.index_select(a, torch.tensor(list(range(s, e, st)), dtype=torch.int64))
    return x


def _squeeze(args: list, at: dict) -> Any:
    x = args[0]
    axes = at.get("axes") or (_ints(args[1]) if len(args) > 1 and args[1] is not None else None)
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _unsqueeze(args: list, at: dict) -> Any:
    x = args[0]
    axes = at.get("axes") or _ints(args[1])
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _pad(args: list, at: dict) -> Any:
    import torch.nn.functional as F

    x, pads = args[0], _ints(args[1])
    mode = _text(at, "mode", "constant")
    value = float(args[2].item()) if len(args) > 2 and args[2] is not None and args[2].numel() else 0.0
    if len(args) > 3 and args[3] is not None:
        raise NotEmulated("Pad with axes")
    n = x.dim()
    torch_pads = [p for i in reversed(range(n)) for p in (pads[i], pads[n + i])]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:  # torch pads only trailing (spatial) axes
        torch_pads = torch_pads[:-2]
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise NotEmulated(f"Pad mode {mode}")
    if torch_mode == "constant":
        return F.pad(x, torch_pads, value=value)
    return F.pad(x, torch_pads, mode=torch_mode)


def _resize(args: list, at: dict) -> Any:
    import torch.nn.functional as F

    x = args[0]
    mode = _text(at, "mode", "nearest")
    ctm = _text(at, "coordinate_transformation_mode", "half_pixel")
    sizes = _ints(args[3]) if len(args) > 3 and args[3] is not None and args[3].numel() else None
    scales = args[2].reshape(-1).tolist() if len(args) > 2 and args[2] is not None and args[2].numel() else None
    if sizes is None and scales is None:
        raise NotEmulated("Resize without scales or sizes")
    if sizes is None:
        sizes = [int(np.floor(d * s)) for d, s in zip(x.shape, scales)]
    if list(sizes[:2]) != list(x.shape[:2]):
        raise NotEmulated("Resize over batch or channel axes")
    spatial = sizes[2:]
    if mode == "nearest":
        nearest = _text(at, "nearest_mode", "round_prefer_floor")
        if ctm == "asymmetric" and nearest == "floor":
            return F.interpolate(x, size=spatial, mode="nearest")
        if ctm in ("half_pixel", "pytorch_half_pixel") and nearest in ("round_prefer_ceil", "round_prefer_floor"):
            return F.interpolate(x, size=spatial, mode="nearest-exact")
        raise NotEmulated(f"nearest Resize with {ctm}/{nearest}")
    if mode == "linear":
        torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            return F.interpolate(x, size=spatial, mode=torch_mode, align_corners=False)
        if ctm == "align_corners":
            return F.interpolate(x, size=spatial, mode=torch_mode, align_corners=True)
    raise NotEmulated(f"Resize mode {mode} with {ctm}")


def _softmax(args: list, at: dict) -> Any:
    return args[0].softmax(dim=at.get("axis", -1))


def _instance_norm(args: list, at: dict) -> Any:
    import torch.nn.functional as F

    return F.instance_norm(args[0], weight=args[1], bias=args[2], eps=at.get("epsilon", 1e-5))


def _batch_norm(args: list, at: dict) -> Any:
    import torch.nn.functional as F

    x, scale, bias, mean, var = args[:5]
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=at.get("epsilon", 1e-5))


def _clip(args: list, at: dict) -> Any:
    lo = args[1].item() if len(args) > 1 and args[1] is not None else at.get("min")
    hi = args[2].item() if len(args) > 2 and args[2] is not None else at.get("max")
    return args[0].clamp(min=lo, max=hi)


def _concat(args: list, at: dict) -> Any:
    import torch

    return torch.cat([a for a in args if a is not None], dim=at["axis"])


def _gather(args: list, at: dict) -> Any:
    import torch

    x, idx = args[0], args[1].long()
    axis = at.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))


def _constant_of_shape(args: list, at: dict) -> Any:
    import torch
    from onnx import numpy_helper

    value = np.array(numpy_helper.to_array(at["value"])) if "value" in at else np.zeros(1, np.float32)
    return torch.full(_ints(args[0]), value.reshape(-1)[0].item(), dtype=torch.from_numpy(value).dtype)


def _fold(fn: Callable, args: list) -> Any:
    out = args[0]
    for a in args[1:]:
        out = fn(out, a)
    return out


def _binary(fn: Callable) -> Callable:
    return lambda args, at: fn(args[0], args[1])


def _unary(fn: Callable) -> Callable:
    return lambda args, at: fn(args[0])


def _ops() -> dict[str, Callable]:
    import torch
    import torch.nn.functional as F

    return {
        "Identity": _unary(lambda x: x),
        "Constant": _constant,
        "Cast": lambda args, at: args[0].to(_dtype(at["to"])),
        "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul),
        "Div": _binary(lambda a, b: torch.div(a, b, rounding_mode="trunc") if not a.is_floating_point()
                       else torch.div(a, b)),
        "Pow": _binary(lambda a, b: torch.pow(a, b.to(a.dtype) if b.is_floating_point() else b)),
        "Equal": _binary(torch.eq), "Where": lambda args, at: torch.where(args[0], args[1], args[2]),
        "Sqrt": _unary(torch.sqrt), "Erf": _unary(torch.erf), "Exp": _unary(torch.exp), "Neg": _unary(torch.neg),
        "Abs": _unary(torch.abs), "Reciprocal": _unary(torch.reciprocal),
        "Relu": _unary(F.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
        "LeakyRelu": lambda args, at: F.leaky_relu(args[0], at.get("alpha", 0.01)),
        "Elu": lambda args, at: F.elu(args[0], at.get("alpha", 1.0)),
        "PRelu": _binary(lambda x, slope: torch.where(x >= 0, x, x * slope)),
        "Gelu": lambda args, at: F.gelu(args[0], approximate=_text(at, "approximate", "none")),
        "Softplus": _unary(F.softplus), "Mish": _unary(F.mish), "HardSwish": _unary(F.hardswish),
        "HardSigmoid": lambda args, at: (args[0] * at.get("alpha", 0.2) + at.get("beta", 0.5)).clamp(0, 1),
        "Selu": _unary(F.selu), "Log": _unary(torch.log), "Sign": _unary(torch.sign), "Floor": _unary(torch.floor),
        "Ceil": _unary(torch.ceil), "Round": _unary(torch.round),
        "Max": lambda args, at: _fold(torch.maximum, args), "Min": lambda args, at: _fold(torch.minimum, args),
        "Dropout": lambda args, at: args[0],
        "Tile": lambda args, at: args[0].repeat(*_ints(args[1])),
        "Clip": _clip,
        "Conv": _conv, "ConvTranspose": _conv_transpose,
        "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
        "GlobalAveragePool": _unary(lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
        "ReduceMean": _reduce("mean"), "ReduceSum": _reduce("sum"), "ReduceMax": _reduce("max"),
        "MatMul": _binary(torch.matmul), "Softmax": _softmax,
        "InstanceNormalization": _instance_norm, "BatchNormalization": _batch_norm,
        "Transpose": lambda args, at: args[0].permute(*at.get("perm", list(reversed(range(args[0].dim()))))),
        "Reshape": _reshape, "Shape": _shape, "Slice": _slice, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
        "Concat": _concat, "Gather": _gather, "ConstantOfShape": _constant_of_shape,
        "Expand": lambda args, at: args[0].expand(torch.broadcast_shapes(args[0].shape, tuple(_ints(args[1])))),
        "Flatten": lambda args, at: args[0].reshape(
            int(np.prod(args[0].shape[:at.get("axis", 1)])), -1),
        "Pad": _pad, "Resize": _resize,
    }
