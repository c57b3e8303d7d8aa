"""Small ONNX graphs with known properties, built directly with onnx.helper for runtime tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scopert.card import ModelCard, Normalization, TensorSpec


def _conv(name: str, x: str, cin: int, cout: int, ndim: int, rng, kernel: int = 3, nodes=None, inits=None) -> str:
    w = (rng.standard_normal((cout, cin) + (kernel,) * ndim) / np.sqrt(cin * kernel ** ndim)).astype(np.float32)
    b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    inits += [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
    nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_y"],
                                  pads=[kernel // 2] * (2 * ndim)))
    return f"{name}_y"


def conv_stack(path: Path, ndim: int = 2, layers: int = 3, channels: int = 4, cin: int = 1, cout: int = 1,
               global_mean: bool = False, upsample: int = 1, axes: str | None = None, seed: int = 0,
               time_window: int | None = None, divisor: int = 1, normalization: Normalization | None = None,
               card: bool = True, halo: int | None = None,
               fixed_shape: tuple[int, ...] | None = None) -> ModelCard | None:
    """A stack of k=3 convs with ReLU; halo = layers. Options: subtract the tile's global mean first
    (tile-variant), nearest upsampling by ``upsample`` at the end (scale), several in/out channels."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    if global_mean:
        nodes.append(helper.make_node("ReduceMean", ["input"], ["mu"], axes=list(range(2, 2 + ndim)), keepdims=1))
        nodes.append(helper.make_node("Sub", ["input", "mu"], ["centred"]))
        x = "centred"
    c = cin
    for i in range(layers):
        out_c = cout if i == layers - 1 else channels
        x = _conv(f"conv{i}", x, c, out_c, ndim, rng, nodes=nodes, inits=inits)
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"]))
            x = f"relu{i}"
        c = out_c
    if upsample > 1:
        scales = np.array([1.0, 1.0] + [float(upsample)] * ndim, np.float32)
        inits.append(numpy_helper.from_array(scales, "scales"))
        nodes.append(helper.make_node("Resize", [x, "", "scales"], ["up"], mode="nearest"))
        x = "up"
    nodes.append(helper.make_node("Identity", [x], ["output"]))
    dims = list(fixed_shape) if fixed_shape else ["b", "c"] + [f"s{i}" for i in range(ndim)]
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    result = None
    if card:
        axes = axes or ("bczyx" if ndim == 3 else "bcyx")
        spatial = [a for a in axes if a not in "bc"]
        result = ModelCard(
            family="test", name=path.stem,
            input=TensorSpec("input", axes, channels=cin, divisor={a: divisor for a in spatial} if divisor > 1 else {},
                             time_window=time_window,
                             fixed={a: n for a, n in zip(axes, fixed_shape) if a != "c"} if fixed_shape else {}),
            output=TensorSpec("output", axes, channels=cout, scale={a: float(upsample) for a in spatial}
                              if upsample > 1 else {}, time_window=time_window),
            halo={a: layers if halo is None else halo for a in spatial},
            tile_invariant=not global_mean,
            normalization=normalization or Normalization(kind="none"),
        )
        result.validate()
        result.embed(model)
    onnx.save(model, str(path))
    return result


def whole_image_reference(path: Path, image: np.ndarray, halo: int, divisor: int = 1, upsample: int = 1) -> np.ndarray:
    """Whole-image inference: reflect-pad by the halo (and up to the divisor), run once, crop."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spatial = image.shape[2:]
    pads = [(0, 0), (0, 0)]
    for n in spatial:
        extra = (-(n + 2 * halo)) % divisor
        pads.append((halo, halo + extra))
    padded = np.pad(image.astype(np.float32), pads, mode="reflect")
    out = sess.run(None, {"input": padded})[0]
    crop = tuple(slice(halo * upsample, (halo + n) * upsample) for n in spatial)
    return out[(slice(None), slice(None)) + crop]
