"""FP16 decided on the CPU: activation ranges on real tiles, a precision plan, and a strongly typed FP16 ONNX.

Steps (``convert_fp16``):
1. calibration tiles: real data (``--calib`` files), else the training data named in the card, else an error;
   cut and normalized by the runtime's own path (``Planner.prepare`` + ``tile_input`` on its tile plan), so
   they equal the tiles the engine will be fed;
2. range analysis: ONNX Runtime (CPU, FP32) with every intermediate float tensor exposed as a graph output;
   max |x|, min/max and the smallest non-zero |x| of every tensor;
3. the plan (``PrecisionPlan``): nodes kept in FP32 with a reason (normalization, large reductions, softmax and
   attention, values within ``safety_factor`` of 65504, ops without an FP16 rule), grouped into islands;
4. our own converter: FP16 nodes and initializers, Cast nodes at island borders, FP32 graph inputs/outputs;
5. predicted error: FP16 ONNX vs FP32 ONNX on ORT CPU (weight rounding only: ORT runs FP16 nodes in FP32),
   a numpy float16 emulation of elementwise overflow on the tensors that became FP16, and, where torch is
   installed, the FP16 graph evaluated in torch float16 on one small tile (``half_emulation``: FP16 storage
   of every intermediate, as on a GPU).

Imports numpy, onnx, onnxruntime, ``scopert.card``, ``scopert.errors`` and the numpy-only runtime
(``scopert.runtime.model`` for tiling and normalization); torch is optional (only the half emulation uses it).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from scopert.card import ModelCard
from scopert.errors import ConfigError, InputError, OutputError, RunError

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
DEFAULT_SAFETY_FACTOR = 4.0
RAW_INPUT_LIMIT = 1024.0  # a normalized input beyond this is raw counts, not normalized data
CALIB_EXTS = (".tif", ".tiff", ".npy", ".npz", ".h5", ".hdf5")

NORM_OPS = {"InstanceNormalization", "GroupNormalization", "LayerNormalization", "BatchNormalization",
            "LpNormalization", "MeanVarianceNormalization"}
REDUCTION_OPS = {"GlobalAveragePool", "GlobalLpPool", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1",
                 "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd"}
SOFTMAX_OPS = {"Softmax", "LogSoftmax", "Hardmax"}
MATMUL_OPS = {"MatMul", "Gemm", "Einsum"}
# Ops that compute the same thing in FP16; anything else stays FP32 ("no FP16 rule").
FP16_OPS = {
    "Conv", "ConvTranspose", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "Tanh", "Elu", "Selu",
    "Gelu", "Erf", "Softplus", "Mish", "HardSwish", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Max", "Min", "Clip",
    "Concat", "Slice", "Split", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Tile",
    "Identity", "Dropout", "Resize", "Upsample", "Pad", "MaxPool", "AveragePool", "DepthToSpace", "SpaceToDepth",
    "Gather", "Where", "MatMul", "Gemm", "Einsum", "Sqrt", "Pow", "Exp", "Log", "Reciprocal", "Sign", "Floor",
    "Ceil", "Round",
}
# (op, input index) that must stay float32 whatever the node's precision (ONNX type constraints).
# Ops that only read a tensor's shape: they take either type as is, no cast, and belong to no precision.
SHAPE_ONLY_OPS = {"Shape", "Size"}
KEEP_FLOAT_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}
_DECOMPOSED_NORM_OPS = {"Sub", "Pow", "Mul", "ReduceMean", "Add", "Sqrt", "Div", "Reciprocal"}


# ---- dataclasses ---------------------------------------------------------------------------------------
@dataclass
class TensorRange:
    """Measured FP32 range of one tensor over all calibration tiles."""

    min: float
    max: float
    max_abs: float
    min_abs_nonzero: float

    @property
    def dynamic_range_log2(self) -> float:
        if self.max_abs <= 0 or not math.isfinite(self.min_abs_nonzero) or self.min_abs_nonzero <= 0:
            return 0.0
        return math.log2(self.max_abs / self.min_abs_nonzero)


@dataclass
class Island:
    """A connected group of FP32 nodes inside the FP16 graph, with the reasons that keep it FP32."""

    nodes: list[str]
    reasons: list[str]


@dataclass
class PrecisionPlan:
    """Which nodes stay FP32 and why; what the calibration measured."""

    safety_factor: float
    limit: float
    fp32_nodes: dict[str, str] = field(default_factory=dict)  # node name -> reason
    fp16_nodes: list[str] = field(default_factory=list)
    islands: list[Island] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    ranges: dict[str, TensorRange] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What goes into the card's ``precision`` field (ranges summarized, islands with reasons)."""
        finite = [r for r in self.ranges.values()]
        top = sorted(self.ranges.items(), key=lambda kv: -kv[1].max_abs)[:10]
        return {
            "mode": "fp16-strongly-typed",
            "safety_factor": self.safety_factor,
            "limit_abs": self.limit,
            "fp16_node_count": len(self.fp16_nodes),
            "fp32_node_count": len(self.fp32_nodes),
            "fp32_island_count": len(self.islands),
            "fp32_islands": [asdict(i) for i in self.islands],
            "fp32_nodes": dict(self.fp32_nodes),
            "calibration": dict(self.calibration),
            "ranges": {
                "tensors": len(finite),
                "max_abs": max((r.max_abs for r in finite), default=0.0),
                "max_dynamic_range_log2": max((r.dynamic_range_log2 for r in finite), default=0.0),
                "largest": {k: asdict(v) for k, v in top},
            },
        }


@dataclass
class Fp16Report:
    """Predicted FP16 error against FP32 on the calibration tiles."""

    psnr_db: float
    max_abs_error: float
    nonfinite_fp16: int
    nonfinite_fp32: int
    emulated_overflow: int  # elements of FP16-assigned tensors that float16 rounding turns into inf
    emulated_overflow_tensors: list[str]
    tiles: int
    torch_half: "HalfEmulation | None" = None
    method: str = ("ORT CPU FP16 graph (weight rounding) + numpy float16 overflow emulation of FP16 tensors + "
                   "torch float16 evaluation of the FP16 graph on one tile")


@dataclass
class HalfEmulation:
    """The FP16 graph evaluated in torch float16 on one tile, against FP32 (``ran`` False: ``note`` says why)."""

    ran: bool
    note: str = ""
    tile_shape: list[int] = field(default_factory=list)
    psnr_db: float | None = None
    max_abs_error: float | None = None
    nonfinite: int = 0


# ---- calibration data ----------------------------------------------------------------------------------
def load_calibration(card: ModelCard, paths: Sequence[str | os.PathLike] | None = None, *, tiles: int = 4,
                     tile: dict[str, int] | None = None, seed: int = 0, allow_raw: bool = False) -> np.ndarray:
    """Normalized calibration tiles in the model's input layout, shape (N, ...) with batch first.

    ``paths``: TIFF/NPY/NPZ/HDF5 files (real data). Without them, the training data named in the card's
    ``training_config`` is used; without that, a ConfigError. A wrong number of axes, wrong channels or
    too-small images is an InputError that names the expected layout.
    """
    sources = [Path(p) for p in paths] if paths else _training_sources(card)
    if not sources:
        raise ConfigError(
            "no calibration data: pass real tiles with --calib FILE (TIFF, NPY, NPZ or HDF5 'raw'), or export "
            "a run whose config names its training data. FP16 is never planned on random data."
        )
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    per_source = max(1, -(-tiles // len(sources)))
    for src in sources:
        arr = _read_array(src)
        for t in _cut_tiles(arr, card, src, per_source, tile, rng, allow_raw):
            out.append(t)
    batch = np.stack(out[: max(tiles, 1)]).astype(np.float32)
    if not np.all(np.isfinite(batch)):
        raise InputError("calibration data holds NaN/Inf after normalization; pass clean real tiles (--calib).")
    return batch


def has_real_tiles(card: ModelCard, paths: Sequence[str | os.PathLike] | None = None) -> bool:
    """Whether :func:`load_calibration` has real data to cut tiles from (given files or the training data)."""
    return bool(paths) or bool(_training_sources(card))


def _training_sources(card: ModelCard) -> list[Path]:
    """Raw training images named in the card's training config (keys containing 'raw'/'input'/'noisy')."""
    found: list[Path] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}")
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and node:
            low = key.lower()
            if any(s in low for s in ("gt", "label", "target", "clean")):
                return
            if not any(s in low for s in ("raw", "input", "noisy", "train", "data")):
                return
            p = Path(node)
            if p.is_file() and p.suffix.lower() in CALIB_EXTS:
                found.append(p)
            elif p.is_dir():
                found.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in CALIB_EXTS)[:4])

    walk(card.training_config, "training_config")
    return found


def _read_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"calibration file {path} does not exist; pass an existing TIFF/NPY/NPZ/HDF5 file.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(str(path)))
        if suffix == ".npy":
            return np.load(path)
        if suffix == ".npz":
            with np.load(path) as z:
                return np.asarray(z[z.files[0]])
        if suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                key = "raw" if "raw" in f else next(iter(f.keys()))
                return np.asarray(f[key])
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise InputError(f"calibration file {path} cannot be read ({type(exc).__name__}: {exc}).") from None
    raise InputError(f"calibration file {path}: unknown type {suffix!r}; use one of {', '.join(CALIB_EXTS)}.")


def _calib_tile(card: ModelCard, tile: dict[str, int] | None) -> dict[str, int]:
    """A small tile per spatial axis: the given one, else the card's default capped small; divisor-rounded."""
    spec = card.input
    cap = {"z": 8, "y": 64, "x": 64} if "z" in spec.axes else {"y": 128, "x": 128}
    out = {}
    for ax in spec.spatial_axes:
        d = int(spec.divisor.get(ax, 1))
        size = int((tile or {}).get(ax) or min(int(card.default_tile.get(ax, cap[ax])), cap[ax]))
        out[ax] = max(d, -(-size // d) * d)
    return out


def _cut_tiles(arr: np.ndarray, card: ModelCard, src: Path, count: int, tile: dict[str, int] | None,
               rng: np.random.Generator, allow_raw: bool) -> Iterable[np.ndarray]:
    """``count`` tiles of one data array in the model layout (without batch), cut by the runtime itself.

    The runtime's own path makes them (``Planner.prepare`` + ``tile_input`` on the runtime's tile plan; for a
    window-of-frames model, its per-frame normalization of the frame window first), so the activation
    ranges measured here are those the engine meets: a calibration tile equals the tile the runtime feeds
    the backend for the same region. The tiles are drawn from the plan's grid.
    """
    from scopert.runtime.layout import centre_frame_model
    from scopert.runtime.planning import Planner, tile_input
    from scopert.runtime.normalize import AppliedNormalization

    spec = card.input
    model_axes = spec.axes[1:]  # without the batch axis
    data_axes = model_axes.replace("c", "") if spec.channels == 1 else model_axes
    expected = f"{data_axes!r}" + (f" or {model_axes!r}" if data_axes != model_axes else "")
    arr = np.asarray(arr)
    if arr.dtype.kind not in "uif" or arr.size == 0:
        raise InputError(f"calibration data {src}: dtype {arr.dtype} / size {arr.size} is not image data.")
    candidates = [model_axes, data_axes]
    if "t" not in data_axes and "z" not in data_axes:
        candidates.append("n" + data_axes)  # a stack of 2D images for a 2D model
    fitting = [a for a in dict.fromkeys(candidates) if len(a) == arr.ndim]
    if not fitting:
        raise InputError(
            f"calibration data {src} has shape {arr.shape} ({arr.ndim} axes); the model input {spec.axes!r} "
            f"needs arrays with axes {expected}. Pass data of that layout (e.g. a 3D stack for a 3D model)."
        )
    good = [a for a in fitting if "c" not in a or arr.shape[a.index("c")] == spec.channels]
    if not good:
        a = fitting[0]
        raise InputError(
            f"calibration data {src} has {arr.shape[a.index('c')]} channels along axis 'c' of {a!r} "
            f"(shape {arr.shape}); the model takes {spec.channels}. Pass data with axes {expected}."
        )
    axes = good[0]
    if card.normalization.kind == "none" and float(np.max(np.abs(arr))) > RAW_INPUT_LIMIT and not allow_raw:
        raise InputError(
            f"calibration data {src} reaches {float(np.max(np.abs(arr))):.0f} and the card says the model takes "
            "it un-normalized: raw counts must not reach an FP16 graph. Normalize the input (set the card's "
            "normalization) or keep the model FP32."
        )
    runtime = Planner(card, src)  # planning and normalization from the card alone
    centre = centre_frame_model(card)
    image_axes = axes[1:] if axes.startswith("n") else axes
    tiled = runtime.in_layout.tiled
    sizes = _calib_tile(card, tile)
    if "t" in image_axes and not centre:
        sizes["t"] = int(spec.time_window or 1)
    if "t" in image_axes and arr.shape[axes.index("t")] < int(spec.time_window or 1):
        raise InputError(f"calibration data {src} has {arr.shape[axes.index('t')]} frames; the model needs "
                         f"windows of {spec.time_window}. Pass a longer time series.")
    for ax in list(sizes):
        d, h = int(spec.divisor.get(ax, 1)), int(card.halo.get(ax, 0))
        if ax in image_axes and arr.shape[axes.index(ax)] < d:
            raise InputError(f"calibration data {src}: axis {ax!r} is {arr.shape[axes.index(ax)]} long, smaller than "
                             f"the model's divisor {d}. Pass larger images.")
        sizes[ax] = max(sizes[ax], -(-(2 * h + 1) // d) * d)  # the tiler needs more than the halo on both sides
    prepared: dict[int, tuple[np.ndarray, Any, Any]] = {}

    def runtime_input(image_index: int, frame: int) -> tuple[np.ndarray, Any]:
        """The array and normalization the runtime tiles for this image (and centre frame)."""
        image = arr[image_index] if axes.startswith("n") else arr
        if centre:  # Model._predict_frames: the window of frames around ``frame``, normalized frame by frame
            movie = np.transpose(image, [image_axes.index(a) for a in "t" + tiled])
            window = movie[runtime.frame_window(movie.shape[0], frame)]
            return runtime._normalize_frames(window), AppliedNormalization(0.0, 1.0)
        if image_index not in prepared:
            prepared[image_index] = runtime.prepare(image, image_axes)
        internal, _, norm = prepared[image_index]
        return internal, norm

    n_images = arr.shape[0] if axes.startswith("n") else 1
    n_frames = arr.shape[axes.index("t")] if centre else 1
    for _ in range(count):
        internal, norm = runtime_input(int(rng.integers(n_images)), int(rng.integers(n_frames)))
        shape = dict(zip(tiled, internal.shape[1:]))
        plan = runtime.make_plan(shape, {ax: sizes.get(ax, shape[ax]) for ax in tiled}, None, "auto", 1).plan
        tiles = list(plan)
        block = tile_input(internal, norm, plan, tiles[int(rng.integers(len(tiles)))])
        yield np.asarray(runtime.in_layout.to_model(block[None])[0], dtype=np.float32)


# ---- range analysis ------------------------------------------------------------------------------------
def _float_tensors(model: Any) -> dict[str, int]:
    """Every tensor name -> ONNX elem type (from shape inference, inputs, outputs and initializers)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def measure_ranges(model: Any, tiles: np.ndarray, input_name: str) -> tuple[dict[str, TensorRange], dict[str, np.ndarray]]:
    """Run ORT CPU (FP32) on each tile with every float tensor exposed; returns ranges and the last outputs."""
    import onnx
    import onnxruntime as ort

    types = _float_tensors(model)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    inits = {i.name for i in exposed.graph.initializer}
    for node in exposed.graph.node:
        if node.op_type == "Constant":
            continue
        for name in node.output:
            if name and name not in present and name not in inits and types.get(name) == onnx.TensorProto.FLOAT:
                exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                present.add(name)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(exposed.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    acc: dict[str, list[float]] = {}
    last: dict[str, np.ndarray] = {}
    for tile in tiles:
        values = session.run(names, {input_name: tile[None]})
        feeds = {input_name: tile[None]}
        for name, v in list(zip(names, values)) + list(feeds.items()):
            v = np.asarray(v)
            if v.dtype != np.float32 or v.size == 0:
                continue
            if not np.all(np.isfinite(v)):
                raise RunError(
                    f"the FP32 model produces NaN/Inf in tensor {name!r} on real calibration tiles; the model or the "
                    "input normalization is broken. Fix that before planning FP16."
                )
            a = np.abs(v)
            nz = a[a > 0]
            stats = [float(v.min()), float(v.max()), float(a.max()), float(nz.min()) if nz.size else math.inf]
            old = acc.get(name)
            acc[name] = stats if old is None else [min(old[0], stats[0]), max(old[1], stats[1]),
                                                   max(old[2], stats[2]), min(old[3], stats[3])]
            last[name] = v
    return {k: TensorRange(*v) for k, v in acc.items()}, last


# ---- planning ------------------------------------------------------------------------------------------
def _consumers(model: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _producers(model: Any) -> dict[str, Any]:
    return {o: node for node in model.graph.node for o in node.output}


def _name_nodes(model: Any) -> None:
    """Give every node a unique name (the plan, the card and TensorRT's errors refer to nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def plan_precision(model: Any, ranges: dict[str, TensorRange], safety_factor: float = DEFAULT_SAFETY_FACTOR,
                   raw_input: bool = False) -> PrecisionPlan:
    """Decide FP32/FP16 per node from the op rules and the measured ranges."""
    import onnx

    if not safety_factor or safety_factor < 1.0:
        raise ConfigError(f"the FP16 safety factor must be >= 1 (e.g. 4 keeps values above 65504/4 in FP32), "
                          f"got {safety_factor!r}.")
    _name_nodes(model)
    limit = FP16_MAX / safety_factor
    plan = PrecisionPlan(safety_factor=safety_factor, limit=limit)
    types = _float_tensors(model)
    consumers, producers = _consumers(model), _producers(model)
    reasons: dict[str, str] = {}
    inputs = {i.name for i in model.graph.input}

    def keep(node: Any, why: str) -> None:
        reasons.setdefault(node.name, why)

    for node in model.graph.node:
        op = node.op_type
        floats = [n for n in list(node.input) + list(node.output) if n and types.get(n) == onnx.TensorProto.FLOAT]
        if op == "Constant" or op in SHAPE_ONLY_OPS or not floats:
            continue
        if op in NORM_OPS:
            keep(node, f"normalization ({op})")
        elif op in REDUCTION_OPS:
            keep(node, f"reduction over the tile ({op}; e.g. channel-attention pooling)")
        elif op in SOFTMAX_OPS:
            keep(node, f"softmax ({op})")
        elif any(g.attribute for g in node.attribute if g.type in (onnx.AttributeProto.GRAPH,)):
            keep(node, f"control flow ({op})")
        elif op not in FP16_OPS:
            keep(node, f"no FP16 rule for {op}")
        if raw_input and any(n in inputs for n in node.input):
            keep(node, "consumes the un-normalized model input (raw counts)")
        big = [(n, ranges[n].max_abs) for n in floats if n in ranges and ranges[n].max_abs > limit]
        if big:
            name, value = max(big, key=lambda kv: kv[1])
            keep(node, f"range: max|{name}| = {value:.4g} > 65504/{safety_factor:g}")
        for n in node.input:
            if n in {i.name for i in model.graph.initializer} and types.get(n) == onnx.TensorProto.FLOAT:
                w = _initializer_max(model, n)
                if w > limit:
                    keep(node, f"weight {n} max|w| = {w:.4g} beyond FP16 range")
    _mark_decomposed_norms(model, consumers, keep)
    _mark_attention(model, consumers, producers, keep)
    for node in model.graph.node:
        if node.name in reasons:
            plan.fp32_nodes[node.name] = reasons[node.name]
        elif node.op_type not in SHAPE_ONLY_OPS and node.op_type != "Constant" and any(types.get(n) == onnx.TensorProto.FLOAT
                                                for n in list(node.input) + list(node.output) if n):
            plan.fp16_nodes.append(node.name)
    plan.islands = _islands(model, plan.fp32_nodes, consumers)
    plan.ranges = ranges
    return plan


def _initializer_max(model: Any, name: str) -> float:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            arr = numpy_helper.to_array(init)
            return float(np.max(np.abs(arr))) if arr.size else 0.0
    return 0.0


def _mark_decomposed_norms(model: Any, consumers: dict[str, list[Any]], keep: Any) -> None:
    """x - mean(x), then squared, averaged, sqrt, divide: keep the whole chain FP32."""
    for node in model.graph.node:
        if node.op_type != "ReduceMean":
            continue
        x = node.input[0]
        for sub in consumers.get(node.output[0], []):
            if sub.op_type == "Sub" and x in sub.input:
                keep(sub, "decomposed normalization (x - mean)")
                frontier, depth = [sub], 0
                while frontier and depth < 6:
                    nxt = []
                    for f in frontier:
                        for c in consumers.get(f.output[0], []):
                            if c.op_type in _DECOMPOSED_NORM_OPS:
                                keep(c, f"decomposed normalization ({c.op_type})")
                                nxt.append(c)
                    frontier, depth = nxt, depth + 1


def _mark_attention(model: Any, consumers: dict[str, list[Any]], producers: dict[str, Any], keep: Any) -> None:
    """MatMuls feeding a Softmax (Q K^T, through scale/mask ops) and consuming one (A V) stay FP32."""
    passthrough = {"Mul", "Div", "Add", "Where", "Reshape", "Transpose", "Cast", "Sub", "Squeeze", "Unsqueeze"}
    for node in model.graph.node:
        if node.op_type not in SOFTMAX_OPS:
            continue
        chain: list[Any] = []
        frontier, depth, found = [node.input[0]], 0, False
        while frontier and depth < 5:
            nxt = []
            for t in frontier:
                p = producers.get(t)
                if p is None:
                    continue
                if p.op_type in MATMUL_OPS:
                    keep(p, "attention logits (Q K^T before softmax)")
                    found = True
                elif p.op_type in passthrough:
                    chain.append(p)
                    nxt.extend(i for i in p.input if i)
            frontier, depth = nxt, depth + 1
        if found:
            for p in chain:
                keep(p, "attention logits scale/mask")
        frontier, depth = [node.output[0]], 0
        while frontier and depth < 4:
            nxt = []
            for t in frontier:
                for c in consumers.get(t, []):
                    if c.op_type in MATMUL_OPS:
                        keep(c, "attention weights x values (after softmax)")
                    elif c.op_type in {"Reshape", "Transpose", "Dropout", "Identity"}:
                        nxt.extend(c.output)
            frontier, depth = nxt, depth + 1


def _islands(model: Any, fp32: dict[str, str], consumers: dict[str, list[Any]]) -> list[Island]:
    """Connected components of FP32 nodes (edges through tensors)."""
    by_name = {n.name: n for n in model.graph.node}
    parent = {n: n for n in fp32}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for name in fp32:
        for out in by_name[name].output:
            for c in consumers.get(out, []):
                if c.name in fp32:
                    parent[find(c.name)] = find(name)
    groups: dict[str, list[str]] = {}
    for name in by_name:  # graph order
        if name in fp32:
            groups.setdefault(find(name), []).append(name)
    islands = []
    for nodes in groups.values():
        reasons = sorted({fp32[n] if not fp32[n].startswith("range:") else fp32[n] for n in nodes})
        islands.append(Island(nodes=nodes, reasons=reasons))
    return islands


# ---- conversion ------------------------------------------------------------------------------------------
def to_fp16_graph(model: Any, plan: PrecisionPlan) -> Any:
    """A strongly typed copy: FP16 nodes and weights, Casts at island borders, FP32 graph inputs and outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    src = onnx.ModelProto()
    src.CopyFrom(model)
    _name_nodes(src)
    types = _float_tensors(src)
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    fp16 = set(plan.fp16_nodes)
    graph_outputs = {o.name for o in src.graph.output}
    inits = {i.name: i for i in src.graph.initializer}
    constants = {n.output[0]: n for n in src.graph.node if n.op_type == "Constant"}

    # tensor -> its new elem type (only float tensors change)
    new_type: dict[str, int] = {}
    for node in src.graph.node:
        for o in node.output:
            if types.get(o) == FLOAT:
                new_type[o] = HALF if node.name in fp16 else FLOAT
    for i in src.graph.input:
        new_type[i.name] = FLOAT

    nodes_out: list[Any] = []
    new_inits: list[Any] = []
    half_copies: dict[str, str] = {}
    casts: dict[tuple[str, int], str] = {}

    def as_type(name: str, want: int) -> str:
        if name in inits or name in constants:
            if want == FLOAT:
                return name
            if name not in half_copies:
                arr = numpy_helper.to_array(inits[name]) if name in inits else numpy_helper.to_array(
                    next(a.t for a in constants[name].attribute if a.name == "value"))
                half = f"{name}__fp16"
                new_inits.append(numpy_helper.from_array(arr.astype(np.float16), half))
                half_copies[name] = half
            return half_copies[name]
        have = new_type.get(name, FLOAT)
        if have == want:
            return name
        key = (name, want)
        if key not in casts:
            out = f"{name}__to_{'fp16' if want == HALF else 'fp32'}"
            nodes_out.append(helper.make_node("Cast", [name], [out], to=want, name=f"cast_{out}"))
            casts[key] = out
        return casts[key]

    renamed_outputs: dict[str, str] = {}
    for node in src.graph.node:
        if node.op_type == "Constant" and node.output[0] in constants:
            nodes_out.append(node)
            continue
        is_half = node.name in fp16
        if node.op_type in SHAPE_ONLY_OPS:
            nodes_out.append(node)
            continue
        for idx, name in enumerate(node.input):
            if not name or types.get(name) != FLOAT:
                continue
            want = HALF if is_half and (node.op_type, idx) not in KEEP_FLOAT_INPUTS else FLOAT
            node.input[idx] = as_type(name, want)
        nodes_out.append(node)
        for idx, o in enumerate(node.output):
            if o in graph_outputs and new_type.get(o) == HALF:
                inner = f"{o}__fp16"
                node.output[idx] = inner
                renamed_outputs[o] = inner
                new_type[inner] = HALF
    # consumers of a renamed graph output read the inner FP16 tensor
    for node in nodes_out:
        for idx, name in enumerate(node.input):
            if name in renamed_outputs:
                node.input[idx] = renamed_outputs[name]
    for o, inner in renamed_outputs.items():
        nodes_out.append(helper.make_node("Cast", [inner], [o], to=FLOAT, name=f"cast_output_{o}"))

    del src.graph.node[:]
    src.graph.node.extend(nodes_out)  # producers precede casts precede consumers: still topological
    src.graph.initializer.extend(new_inits)
    # drop FP32 initializers that only FP16 nodes used
    used = {n for node in src.graph.node for n in node.input}
    keep = [i for i in src.graph.initializer if i.name in used]
    del src.graph.initializer[:]
    src.graph.initializer.extend(keep)
    del src.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(src, strict_mode=True)


# ---- prediction ------------------------------------------------------------------------------------------
def predict_fp16_error(fp32_model: Any, fp16_model: Any, tiles: np.ndarray, input_name: str,
                       plan: PrecisionPlan, last_values: dict[str, np.ndarray]) -> Fp16Report:
    """FP16 vs FP32 on ORT CPU, and float16 rounding of every FP16-assigned tensor's FP32 values."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s32 = ort.InferenceSession(fp32_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    s16 = ort.InferenceSession(fp16_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out_name = s32.get_outputs()[0].name
    refs, gots = [], []
    for tile in tiles:
        refs.append(s32.run([out_name], {input_name: tile[None]})[0].astype(np.float64))
        gots.append(s16.run([out_name], {input_name: tile[None]})[0].astype(np.float64))
    ref, got = np.concatenate([r.ravel() for r in refs]), np.concatenate([g.ravel() for g in gots])
    psnr, max_err, bad16 = _compare(ref, got)
    # numpy float16 emulation: values of tensors that run in FP16, rounded to float16
    half_tensors = _fp16_tensor_names(fp32_model, plan)
    overflow, where = 0, []
    with np.errstate(over="ignore"):
        for name in half_tensors:
            v = last_values.get(name)
            if v is None:
                continue
            n = int(np.sum(~np.isfinite(v.astype(np.float16))))
            if n:
                overflow += n
                where.append(name)
    return Fp16Report(psnr_db=psnr, max_abs_error=max_err, nonfinite_fp16=bad16,
                      nonfinite_fp32=int(np.sum(~np.isfinite(ref))), emulated_overflow=overflow,
                      emulated_overflow_tensors=where, tiles=int(len(tiles)),
                      torch_half=emulate_in_torch_half(fp16_model, tiles[:1], input_name, refs[0]))


def _compare(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, int]:
    """PSNR (peak: the reference's range) and max abs error over the finite values, and the non-finite count."""
    ref, got = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    ok = np.isfinite(got)
    err = np.abs(got[ok] - ref[ok]) if ok.any() else np.array([np.inf])
    peak = float(ref.max() - ref.min()) or 1.0
    mse = float(np.mean(err ** 2))
    psnr = float("inf") if mse == 0 else 10 * math.log10(peak * peak / mse)
    return psnr, float(err.max()) if err.size else 0.0, int(np.sum(~ok))


def emulate_in_torch_half(fp16_model: Any, tile: np.ndarray, input_name: str, ref: np.ndarray) -> HalfEmulation:
    """Run the strongly typed graph in torch float16 (ORT CPU would compute it in FP32) and compare to FP32."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return HalfEmulation(ran=False, note="torch is not installed; the ORT CPU prediction stands alone")
    from scopert.export.half_emulation import NotEmulated, run_graph

    try:
        got = run_graph(fp16_model, {input_name: tile.astype(np.float32)})[0]
    except NotEmulated as exc:
        log.warning("torch half emulation not run: %s", exc)
        return HalfEmulation(ran=False, note=f"not emulated: {exc}")
    psnr, max_err, bad = _compare(ref, got)
    return HalfEmulation(ran=True, tile_shape=list(tile.shape), psnr_db=psnr, max_abs_error=max_err, nonfinite=bad)


def predict_bf16(onnx_path: str | os.PathLike, tiles: np.ndarray) -> HalfEmulation:
    """bf16 accuracy without a bf16 CPU: the FP32 graph in torch with every float tensor stored as bfloat16,
    against ORT FP32, on ``tiles`` (normalized, model layout, batch first). Pessimistic: OpenVINO's bf16 mode
    keeps some ops in f32. It predicts the accuracy gate; the gate itself is measured on the backend."""
    import onnx
    import onnxruntime as ort

    from scopert.export.half_emulation import NotEmulated, run_graph

    model = onnx.load(str(onnx_path))
    name = model.graph.input[0].name
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    try:
        got = np.concatenate([run_graph(model, {name: t[None]}, store_floats_as="bfloat16")[0] for t in tiles])
    except NotEmulated as exc:
        return HalfEmulation(ran=False, note=f"not emulated: {exc}")
    ref = np.concatenate([session.run(None, {name: t[None]})[0] for t in tiles])
    psnr, max_err, bad = _compare(ref, got)
    return HalfEmulation(ran=True, tile_shape=list(tiles.shape), psnr_db=psnr, max_abs_error=max_err, nonfinite=bad)


def _fp16_tensor_names(model: Any, plan: PrecisionPlan) -> list[str]:
    half = set(plan.fp16_nodes)
    return [o for n in model.graph.node if n.name in half for o in n.output]


# ---- the whole step --------------------------------------------------------------------------------------
@dataclass
class Fp16Result:
    path: Path
    card: ModelCard
    plan: PrecisionPlan
    report: Fp16Report


def convert_fp16(onnx_path: str | os.PathLike, out_path: str | os.PathLike, calib: Sequence[str | os.PathLike] | None = None,
                 *, safety_factor: float = DEFAULT_SAFETY_FACTOR, tiles: int = 4, tile: dict[str, int] | None = None,
                 allow_raw: bool = False, seed: int = 0, calib_tiles: np.ndarray | None = None) -> Fp16Result:
    """Plan and write the strongly typed FP16 ONNX of ``onnx_path`` (an FP32 export with a card).

    ``calib_tiles``: already normalized tiles in the model layout with batch first (skips file loading).
    """
    import onnx

    from scopert.export.onnx_export import write_onnx, read_card

    src, out = Path(onnx_path), Path(out_path)
    if out.suffix.lower() != ".onnx" or out.resolve() == src.resolve():
        raise OutputError(f"the FP16 model {out} must be a new .onnx file (not the FP32 source {src}).")
    card = read_card(src)
    model = onnx.load(str(src))
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) or any(
            n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
            for n in model.graph.node):
        raise InputError(f"{src} already holds FP16 tensors; convert the FP32 export, not an FP16 model.")
    _name_nodes(model)
    if calib_tiles is None:
        calib_tiles = load_calibration(card, calib, tiles=tiles, tile=tile, seed=seed, allow_raw=allow_raw)
    calib_tiles = _check_tiles(calib_tiles, card)
    in_max = float(np.max(np.abs(calib_tiles)))
    raw = in_max > RAW_INPUT_LIMIT
    if raw and not allow_raw:
        raise InputError(
            f"the calibration input reaches |x| = {in_max:.0f}: these are raw counts, not normalized data, and they "
            "must not reach the FP16 path. Normalize the input (the card's normalization) or pass allow_raw to keep "
            "the nodes that see them in FP32."
        )
    ranges, last = measure_ranges(model, calib_tiles, card.input.name)
    plan = plan_precision(model, ranges, safety_factor=safety_factor, raw_input=raw)
    plan.calibration = {"tiles": int(len(calib_tiles)), "tile_shape": list(calib_tiles.shape[1:]),
                        "sources": [str(p) for p in (calib or [])] or ["card training data"],
                        "input_max_abs": in_max, "raw_input_kept_fp32": raw}
    fp16 = to_fp16_graph(model, plan)
    report = predict_fp16_error(model, fp16, calib_tiles, card.input.name, plan, last)
    card.precision = plan.summary()
    # the FP32 export this FP16 graph came from: doctor --gpu-check compares the engine against it
    from scopert.checksum import sha256_file

    card.precision["fp32_reference"] = {"file": src.name, "sha256": sha256_file(src)}
    card.verification = dict(card.verification)
    card.verification["fp16_vs_fp32"] = asdict(report)
    card.validate(where=str(out))
    card.embed(fp16)
    try:
        onnx.checker.check_model(fp16, full_check=True)
    except Exception as exc:
        raise RunError(f"the FP16 graph fails onnx.checker ({exc}); report this with the model.") from exc
    write_onnx(fp16, out)
    log.info("FP16 %s: %d FP16 / %d FP32 nodes in %d islands, PSNR %.1f dB vs FP32, %d NaN/Inf; %s", out,
             len(plan.fp16_nodes), len(plan.fp32_nodes), len(plan.islands), report.psnr_db, report.nonfinite_fp16,
             describe_half(report.torch_half))
    return Fp16Result(out, card, plan, report)


def describe_half(half: HalfEmulation | None) -> str:
    if half is None or not half.ran:
        return f"torch float16 emulation not run ({half.note if half else 'no tile'})"
    return (f"torch float16 emulation on {half.tile_shape}: PSNR {half.psnr_db:.1f} dB, max err "
            f"{half.max_abs_error:.2g}, {half.nonfinite} NaN/Inf")


def _check_tiles(tiles: np.ndarray, card: ModelCard) -> np.ndarray:
    tiles = np.asarray(tiles, dtype=np.float32)
    spec = card.input
    if tiles.ndim != len(spec.axes):
        raise InputError(f"calibration tiles have shape {tiles.shape}; the model input {spec.axes!r} needs "
                         f"{len(spec.axes)} axes (batch first).")
    if "c" in spec.axes and tiles.shape[spec.axes.index("c")] != spec.channels:
        raise InputError(f"calibration tiles have {tiles.shape[spec.axes.index('c')]} channels (shape "
                         f"{tiles.shape}, axes {spec.axes!r}); the model takes {spec.channels}.")
    for ax, d in spec.divisor.items():
        if tiles.shape[spec.axes.index(ax)] % int(d):
            raise InputError(f"calibration tiles: axis {ax!r} = {tiles.shape[spec.axes.index(ax)]} is not a multiple "
                             f"of the model's divisor {d}.")
    return tiles
