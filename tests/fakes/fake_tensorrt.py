"""A fake ``tensorrt`` module, true to the 10.x and 11.x Python API where ScopeRT's code depends on it.

``make_fake_tensorrt("10.16.1.11")`` or ``("11.4.0.106")``. What it keeps of the real bindings:

- enum values: ``NetworkDefinitionCreationFlag`` (10.x: EXPLICIT_BATCH = 0, deprecated; STRONGLY_TYPED = 1;
  11.x: STRONGLY_TYPED = 0 and ignored, EXPLICIT_BATCH gone, other bits refused), ``BuilderFlag`` (NvInfer.h
  values; 11.x has no FP16/BF16/INT8/FP8/INT4/FP4/OBEY_/PREFER_PRECISION_CONSTRAINTS), ``DataType``
  (FLOAT = 0, HALF = 1, ...; ``trt.float32``/``trt.float16`` are its members), ``TensorIOMode``;
- a builder config with **TF32 on by default** (``get_flag``/``set_flag``/``clear_flag``/``flags``); an FP32
  engine built with TF32 rounds its inputs to TF32's 10-bit mantissa, as tensor-core convs may;
- a 10.x network created without the STRONGLY_TYPED bit is weakly typed: an FP16 graph builds an FP32 engine;
- ``add_optimization_profile`` returns -1 for a profile that misses an input or when ``profile_fails``;
  ``set_timing_cache`` returns False for a cache from another device (unless ``ignore_mismatch``);
  ``create_timing_cache`` returns None for bytes it cannot read; ``build_serialized_network`` returns None
  when ``builder_fails``; ``Builder``/``Runtime`` raise TypeError without a GPU (``no_gpu``), as pybind11 does;
  ``create_execution_context`` returns None beyond ``max_contexts``;
- output shapes differ from input shapes (the output channels and integer scale come from the model's card)
  and are -1 on the dynamic axes until ``set_input_shape``; I/O dtypes follow the ONNX graph (``io_dtype``
  overrides: 'half' gives FP16 I/O);
- execution: ``execute_async_v3(stream)`` only enqueues on the fake ``cuda.bindings.runtime``
  (``tests/fakes/fake_cudart.py``); the work runs when an event recorded after it is synchronized. The
  computation is ``out[:, k] = (2 + k) * mean_c(in) + 1``, nearest-upsampled by the card's scale. Two
  contexts with work in flight on the same optimization profile is recorded in ``trt.profile_conflicts``
  and their outputs are garbage (NaN), which is what undefined behaviour looks like when it bites.

``executor`` replaces the numpy kernel (the device check passes a cupy one). Plans are ``MAGIC`` + JSON.
"""

from __future__ import annotations

import enum
import json
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

MAGIC = b"FAKEPLAN"
NO_GPU_ERROR = "pybind11::init(): factory function returned nullptr"


@dataclass
class Recorder:
    calls: list[tuple] = field(default_factory=list)

    def __call__(self, *item: Any) -> None:
        self.calls.append(item)

    def named(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


BUILDER_FLAGS_10 = {
    "FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
    "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "OBEY_PRECISION_CONSTRAINTS": 9, "PREFER_PRECISION_CONSTRAINTS": 10,
    "DIRECT_IO": 11, "REJECT_EMPTY_ALGORITHMS": 12, "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14,
    "FP8": 15, "ERROR_ON_TIMING_CACHE_MISS": 16, "BF16": 17, "DISABLE_COMPILATION_CACHE": 18, "STRIP_PLAN": 19,
    "REFIT_IDENTICAL": 20, "WEIGHT_STREAMING": 21, "INT4": 22, "REFIT_INDIVIDUAL": 23, "STRICT_NANS": 24,
    "MONITOR_MEMORY": 25, "FP4": 26, "EDITABLE_TIMING_CACHE": 27,
}
REMOVED_IN_11 = ("FP16", "INT8", "BF16", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                 "PREFER_PRECISION_CONSTRAINTS")
NP_OF = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32, DataType.INT8: np.int8,
         DataType.UINT8: np.uint8}


def _tf32(x: np.ndarray) -> np.ndarray:
    """Round float32 to TF32 (10-bit mantissa), as tensor cores read conv/matmul inputs with TF32 on."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def reference_kernel(x: np.ndarray, out_channels: int, scale: tuple[int, ...]) -> np.ndarray:
    """What the fake engine computes, in float64: (2 + k) * mean over channels + 1, nearest-upsampled."""
    m = np.asarray(x, np.float64).mean(axis=1, keepdims=True)
    out = np.concatenate([(2 + k) * m + 1 for k in range(out_channels)], axis=1)
    for i, s in enumerate(scale):
        if s > 1:
            out = np.repeat(out, s, axis=2 + i)
    return out


def _model_of(path: str) -> dict:
    """Input/output names, I/O dtypes, ranks, output channels and scale of an ONNX file (card if embedded)."""
    import onnx

    from scopert.card import card_from_metadata

    model = onnx.load(path, load_external_data=False)
    half = onnx.TensorProto.FLOAT16
    inp, out = model.graph.input[0], model.graph.output[0]
    rank = len(inp.type.tensor_type.shape.dim)
    meta = {p.key: p.value for p in model.metadata_props}
    card = card_from_metadata(meta, where=path)
    out_channels, scale = None, [1] * (rank - 2)
    if card is not None:
        out_channels = card.output.channels
        spatial = [a for a in card.input.axes if a not in "bc"]
        scale = [int(round(float(card.output.scale.get(a, 1.0)))) for a in spatial]
        rank = len(card.input.axes)
    fp16 = any(i.data_type == half for i in model.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == half for a in n.attribute) for n in model.graph.node)
    return {"path": str(path), "input": inp.name, "output": out.name, "rank": rank,
            "in_dtype": int(DataType.HALF if inp.type.tensor_type.elem_type == half else DataType.FLOAT),
            "out_dtype": int(DataType.HALF if out.type.tensor_type.elem_type == half else DataType.FLOAT),
            "out_channels": out_channels, "scale": scale, "fp16_graph": fp16,
            "ops": [n.op_type for n in model.graph.node], "names": [n.name for n in model.graph.node]}


def make_fake_tensorrt(version: str, cudart: Any = None, *, unsupported_ops: tuple[str, ...] = (),
                       builder_fails: bool = False, profile_fails: bool = False, no_gpu: bool = False,
                       max_contexts: int = 64, io_dtype: str | None = None, device_name: str = "NVIDIA H100 80GB HBM3",
                       executor: Callable[..., None] | None = None, cuda: Any = None) -> types.ModuleType:
    """A fresh fake module; ``cudart`` is the fake ``cuda.bindings.runtime`` engines execute on."""
    cudart = cudart if cudart is not None else cuda
    major = int(version.split(".")[0])
    rec = Recorder()
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.recorder = rec
    trt.profile_conflicts = []
    trt.DataType = DataType
    trt.float32, trt.float16, trt.int8, trt.int32, trt.bool, trt.uint8, trt.bfloat16, trt.int64 = (
        DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32, DataType.BOOL, DataType.UINT8, DataType.BF16,
        DataType.INT64)
    trt.nptype = lambda dt: NP_OF[DataType(dt)]
    trt.TensorIOMode = TensorIOMode

    class Logger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity

        def __init__(self, min_severity: int = 2) -> None:
            self.min_severity = min_severity

    trt.Logger = Logger
    if major >= 11:
        trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0})
        valid_network_bits = 1 << 0
        bflags = {k: v for k, v in BUILDER_FLAGS_10.items() if k not in REMOVED_IN_11}
    else:
        trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                         {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
        valid_network_bits = (1 << 0) | (1 << 1)
        bflags = dict(BUILDER_FLAGS_10)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", bflags)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1})
    tf32_bit = 1 << int(trt.BuilderFlag.TF32)

    class HostMemory(bytes):
        """IHostMemory: ``bytes(plan)`` and ``plan.nbytes`` work."""

        @property
        def nbytes(self) -> int:
            return len(self)

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.strongly_typed = major >= 11 or bool(flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            self.model: dict | None = None

        @property
        def num_inputs(self) -> int:
            return 1 if self.model else 0

    class ParserError:
        def __init__(self, desc: str, node: int, name: str, op: str) -> None:
            self._d, self._n, self._name, self._op = desc, node, name, op

        def desc(self) -> str:
            return self._d

        def node(self) -> int:
            return self._n

        def node_name(self) -> str:
            return self._name

        def node_operator(self) -> str:
            return self._op

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            rec("parse_from_file", path)
            model = _model_of(path)
            for i, (op, name) in enumerate(zip(model["ops"], model["names"])):
                if op in unsupported_ops:
                    self.errors.append(ParserError(f"No importer registered for op: {op}", i, name, op))
            self.network.model = model
            return not self.errors

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TRT's names
            lo, op, hi = tuple(min), tuple(opt), tuple(max)
            if not (len(lo) == len(op) == len(hi)) or not all(0 < a <= b <= c for a, b, c in zip(lo, op, hi)):
                raise ValueError(f"invalid profile dimensions {lo} {op} {hi}")
            rec("set_shape", input, lo, op, hi)
            self.shapes[input] = (lo, op, hi)

    class TimingCache:
        def __init__(self, entries: int, device: str) -> None:
            self.entries, self.device = entries, device

        def serialize(self) -> HostMemory:
            return HostMemory(json.dumps({"timing_cache": self.entries, "device": self.device}).encode())

    class Config:
        def __init__(self) -> None:
            self.flags = tf32_bit  # TensorRT's default: TF32 on
            self.profiles: list[Profile] = []
            self.builder_optimization_level = 3
            self.cache: TimingCache | None = None

        def set_flag(self, flag: Any) -> None:
            rec("set_flag", trt.BuilderFlag(flag).name)
            self.flags |= 1 << int(flag)

        def clear_flag(self, flag: Any) -> None:
            rec("clear_flag", trt.BuilderFlag(flag).name)
            self.flags &= ~(1 << int(flag))

        def get_flag(self, flag: Any) -> bool:
            return bool(self.flags & (1 << int(flag)))

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            rec("set_memory_pool_limit", trt.MemoryPoolType(pool).name, size)

        def add_optimization_profile(self, p: Profile) -> int:
            rec("add_optimization_profile", dict(p.shapes))
            if profile_fails or not p.shapes:
                return -1
            self.profiles.append(p)
            return len(self.profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profiles)

        def create_timing_cache(self, serialized_timing_cache: bytes) -> TimingCache | None:
            data = bytes(serialized_timing_cache)
            rec("create_timing_cache", data)
            if not data:
                return TimingCache(0, device_name)
            try:
                d = json.loads(data)
                return TimingCache(int(d["timing_cache"]), str(d["device"]))
            except (ValueError, KeyError, TypeError):
                return None

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            rec("set_timing_cache", cache.entries, ignore_mismatch)
            if cache.device != device_name and not ignore_mismatch:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            rec("Builder")
            if no_gpu:
                raise TypeError(NO_GPU_ERROR)

        def create_network(self, flags: int = 0) -> Network | None:
            rec("create_network", flags)
            if flags & ~valid_network_bits:
                return None  # the C++ factory logs and returns nullptr
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> HostMemory | None:
            tf32 = config.get_flag(trt.BuilderFlag.TF32)
            rec("build", network.flags, tf32, config.builder_optimization_level, len(config.profiles))
            if builder_fails or network.model is None:
                return None
            name = network.model["input"]
            if not config.profiles or any(name not in p.shapes for p in config.profiles):
                return None  # "dynamic input is missing dimensions in profile 0"
            if config.cache is not None:
                config.cache.entries += 1
            m = network.model
            in_dt = DataType.HALF if io_dtype == "half" else DataType(m["in_dtype"])
            out_dt = DataType.HALF if io_dtype == "half" else DataType(m["out_dtype"])
            plan = {"model": m, "profiles": [[list(s) for s in p.shapes[name]] for p in config.profiles],
                    "strongly_typed": network.strongly_typed, "tf32": tf32,
                    "precision": "fp16" if m["fp16_graph"] and network.strongly_typed else "fp32",
                    "in_dtype": int(in_dt), "out_dtype": int(out_dt)}
            return HostMemory(MAGIC + json.dumps(plan).encode())

    if major < 11:
        Builder.platform_has_fast_fp16 = property(lambda self: True)

    class Context:
        def __init__(self, engine: "Engine") -> None:
            self.engine, self.input_shape, self.addresses = engine, None, {}
            self.active_optimization_profile = 0
            self.pending = 0  # kernels enqueued and not yet run
            rec("create_execution_context")

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            rec("set_optimization_profile_async", profile_index, int(stream_handle))
            if not 0 <= profile_index < self.engine.num_optimization_profiles:
                return False
            self.active_optimization_profile = profile_index
            self.input_shape = None
            return True

        def set_input_shape(self, name: str, shape: Any) -> bool:
            shape = tuple(int(s) for s in shape)
            rec("set_input_shape", name, shape)
            if name != self.engine.model["input"]:
                return False
            lo, _, hi = self.engine.profiles[self.active_optimization_profile]
            if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.input_shape = shape
            return True

        def _out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
            m = self.engine.model
            c = m["out_channels"] or shape[1]
            return (shape[0], c) + tuple(s * k for s, k in zip(shape[2:], m["scale"]))

        def get_tensor_shape(self, name: str) -> tuple:
            m = self.engine.model
            if name == m["input"]:
                return self.input_shape or self.engine.get_tensor_shape(name)
            if self.input_shape is None:
                return self.engine.get_tensor_shape(name)
            return self._out_shape(self.input_shape)

        def set_tensor_address(self, name: str, memory: int) -> bool:
            rec("set_tensor_address", name, int(memory))
            self.addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            rec("execute_async_v3", int(stream_handle))
            m, e = self.engine.model, self.engine
            if self.input_shape is None or set(self.addresses) != {m["input"], m["output"]}:
                return False
            conflict = [c for c in e.contexts if c is not self and c.pending
                        and c.active_optimization_profile == self.active_optimization_profile]
            if conflict:
                trt.profile_conflicts.append(self.active_optimization_profile)
            in_shape, out_shape = self.input_shape, self._out_shape(self.input_shape)
            in_np, out_np = np.dtype(NP_OF[e.in_dtype]), np.dtype(NP_OF[e.out_dtype])
            src, dst = self.addresses[m["input"]], self.addresses[m["output"]]
            if executor is not None:
                executor(int(stream_handle), src, dst, in_shape, out_shape, in_np, out_np, m)
                return True
            corrupt = bool(conflict)
            ctx = self

            def kernel() -> None:
                n_in = int(np.prod(in_shape)) * in_np.itemsize
                n_out = int(np.prod(out_shape)) * out_np.itemsize
                x = cudart.device_view(src, n_in).view(in_np).reshape(in_shape).astype(np.float32)
                if e.precision == "fp32" and e.tf32:
                    x = _tf32(x)
                y = reference_kernel(x, out_shape[1], tuple(m["scale"]))
                y = y.astype(np.float16) if e.precision == "fp16" else y.astype(np.float32)
                if corrupt:
                    y = np.full_like(y, np.nan)
                cudart.device_view(dst, n_out)[:] = np.ascontiguousarray(y.astype(out_np)).view(np.uint8).ravel()
                ctx.pending -= 1

            self.pending += 1
            cudart.enqueue(int(stream_handle), kernel, 1e-6 * float(np.prod(out_shape)))
            return True

    class Engine:
        def __init__(self, plan: dict) -> None:
            self.model = plan["model"]
            self.profiles = [tuple(tuple(s) for s in p) for p in plan["profiles"]]
            self.precision, self.tf32 = plan["precision"], plan["tf32"]
            self.in_dtype, self.out_dtype = DataType(plan["in_dtype"]), DataType(plan["out_dtype"])
            self.contexts: list[Context] = []

        @property
        def num_io_tensors(self) -> int:
            return 2

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profiles)

        def get_tensor_name(self, index: int) -> str:
            return (self.model["input"], self.model["output"])[index]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return TensorIOMode.INPUT if name == self.model["input"] else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> DataType:
            return self.in_dtype if name == self.model["input"] else self.out_dtype

        def get_tensor_shape(self, name: str) -> tuple:
            """Engine-level shapes: -1 on every axis a profile may vary (batch, spatial; channels fixed)."""
            lo, _, hi = self.profiles[0]
            dims = tuple(a if a == b else -1 for a, b in zip(lo, hi))
            if name == self.model["input"]:
                return dims
            return (dims[0], self.model["out_channels"] or dims[1]) + tuple(
                d if d < 0 else d * k for d, k in zip(dims[2:], self.model["scale"]))

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
            if name != self.model["input"]:
                raise RuntimeError("get_tensor_profile_shape is for input tensors")
            return [tuple(s) for s in self.profiles[profile_index]]

        def create_execution_context(self) -> Context | None:
            if len(self.contexts) >= max_contexts:
                return None
            ctx = Context(self)
            self.contexts.append(ctx)
            return ctx

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            rec("Runtime")
            if no_gpu:
                raise TypeError(NO_GPU_ERROR)

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> Engine | None:
            data = bytes(serialized_engine)
            rec("deserialize_cuda_engine", len(data))
            if not data.startswith(MAGIC):
                return None
            try:
                return Engine(json.loads(data[len(MAGIC):]))
            except ValueError:
                return None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def onnxruntime_executor(cudart: Any) -> Callable[..., None]:
    """An ``executor`` that runs the engine's own ONNX on ONNX Runtime (CPU) inside the fake CUDA stream, so a
    fake FP16 engine differs from the FP32 graph as the FP16 graph does (weight rounding)."""
    import onnxruntime as ort

    sessions: dict[str, Any] = {}

    def execute(stream, src, dst, in_shape, out_shape, in_np, out_np, model) -> None:
        if model["path"] not in sessions:
            sessions[model["path"]] = ort.InferenceSession(model["path"], providers=["CPUExecutionProvider"])
        session = sessions[model["path"]]

        def kernel() -> None:
            x = cudart.device_view(src, int(np.prod(in_shape)) * in_np.itemsize).view(in_np).reshape(in_shape)
            y = session.run(None, {model["input"]: x.astype(np.float32)})[0].astype(out_np)
            cudart.device_view(dst, y.nbytes)[:] = np.ascontiguousarray(y).view(np.uint8).ravel()

        cudart.enqueue(stream, kernel, 0.01)

    return execute
