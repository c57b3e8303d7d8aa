"""A fake ``tensorrt`` module that records calls and enforces the API of the version it imitates.

``make_fake_tensorrt("10.16.1.11")`` or ``("11.4.0.106")``: on 11.x ``BuilderFlag.FP16``,
``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` and ``Builder.platform_has_fast_fp16`` do not exist (AttributeError,
as in the real 11.x bindings). Profiles check min <= opt <= max. The parser fails on ``unsupported_ops`` and reports the
node like ``ParserError`` does. Engines are JSON plans; execution computes ``output = 2 * input + 1`` through a
FakeCuda device memory.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = b"FAKEPLAN"


@dataclass
class Recorder:
    calls: list[tuple] = field(default_factory=list)

    def __call__(self, *item: Any) -> None:
        self.calls.append(item)

    def named(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


def make_fake_tensorrt(version: str, cuda: Any = None, unsupported_ops: tuple[str, ...] = (),
                       builder_fails: bool = False) -> types.ModuleType:
    major = int(version.split(".")[0])
    rec = Recorder()
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.recorder = rec
    trt.float32, trt.float16 = "float32", "float16"

    class Logger:
        WARNING, INFO, ERROR = 2, 3, 1

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    flags = {"STRONGLY_TYPED": 1}
    if major < 11:
        flags["EXPLICIT_BATCH"] = 0
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
    bflags = {"TF32": 7, "REFIT": 1, "VERSION_COMPATIBLE": 9}
    if major < 11:
        bflags.update(FP16=0, INT8=2, OBEY_PRECISION_CONSTRAINTS=10)
    trt.BuilderFlag = types.SimpleNamespace(**bflags)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.Logger = Logger

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[str] = []
            self.outputs: list[str] = []

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
            import onnx

            rec("parse_from_file", path)
            model = onnx.load(path)
            for i, node in enumerate(model.graph.node):
                if node.op_type in unsupported_ops:
                    self.errors.append(ParserError(f"No importer registered for op: {node.op_type}", i, node.name,
                                                   node.op_type))
            self.network.inputs = [i.name for i in model.graph.input]
            self.network.outputs = [o.name for o in model.graph.output]
            return not self.errors

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TRT's names
            lo, op, hi = tuple(min), tuple(opt), tuple(max)
            if not (len(lo) == len(op) == len(hi)) or not all(a <= b <= c for a, b, c in zip(lo, op, hi)):
                raise ValueError(f"invalid profile {lo} {op} {hi}")
            rec("set_shape", name, lo, op, hi)
            self.shapes[name] = (lo, op, hi)

    class TimingCache:
        def __init__(self, entries: int) -> None:
            self.entries = entries

        def serialize(self) -> bytes:
            return json.dumps({"timing_cache": self.entries}).encode()

    class Config:
        def __init__(self) -> None:
            self.flags: set[int] = set()
            self.profiles: list[Profile] = []
            self.builder_optimization_level = 3
            self.cache: TimingCache | None = None

        def set_flag(self, flag: int) -> None:
            rec("set_flag", flag)
            self.flags.add(flag)

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            rec("set_memory_pool_limit", pool, size)

        def add_optimization_profile(self, p: Profile) -> int:
            self.profiles.append(p)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            rec("create_timing_cache", bytes(data))
            if not data:
                return TimingCache(0)
            try:
                return TimingCache(int(json.loads(bytes(data))["timing_cache"]))
            except Exception as exc:
                raise RuntimeError("invalid timing cache") from exc

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            rec("set_timing_cache", cache.entries, ignore_mismatch)
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            rec("Builder")

        def create_network(self, flags: int = 0) -> Network:
            rec("create_network", flags)
            if major >= 11 and flags & ~1:
                raise ValueError("unknown network flag on TensorRT 11")
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            rec("build", network.flags, sorted(config.flags), config.builder_optimization_level)
            if builder_fails:
                return None
            if not config.profiles:
                raise RuntimeError("dynamic input is missing dimensions in profile 0")
            if config.cache is not None:
                config.cache.entries += 1
            shapes = {k: [list(s) for s in v] for k, v in config.profiles[0].shapes.items()}
            plan = {"inputs": network.inputs, "outputs": network.outputs, "profile": shapes,
                    "strongly_typed": bool(network.flags & 1) or major >= 11}
            return MAGIC + json.dumps(plan).encode()

    if major < 11:
        Builder.platform_has_fast_fp16 = property(lambda self: True)

    class Context:
        def __init__(self, engine: "Engine") -> None:
            self.engine, self.shapes, self.addresses = engine, {}, {}
            rec("create_execution_context")

        def set_input_shape(self, name: str, shape: Any) -> bool:
            rec("set_input_shape", name, tuple(shape))
            lo, _, hi = self.engine.profile[name]
            shape = tuple(shape)
            if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            return self.shapes[self.engine.inputs[0]]  # same-shape model

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            rec("set_tensor_address", name, ptr)
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream: int) -> bool:
            rec("execute_async_v3", stream)
            name_in, name_out = self.engine.inputs[0], self.engine.outputs[0]
            n = int(np.prod(self.shapes[name_in]))
            cuda.kernel(stream, self.addresses[name_in], self.addresses[name_out], n)
            return True

    class Engine:
        def __init__(self, plan: dict) -> None:
            self.inputs, self.outputs = plan["inputs"], plan["outputs"]
            self.profile = {k: tuple(tuple(s) for s in v) for k, v in plan["profile"].items()}

        @property
        def num_io_tensors(self) -> int:
            return len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, i: int) -> str:
            return (self.inputs + self.outputs)[i]

        def get_tensor_mode(self, name: str) -> str:
            return "INPUT" if name in self.inputs else "OUTPUT"

        def get_tensor_dtype(self, name: str) -> str:
            return "float32"

        def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
            return self.profile[name]

        def create_execution_context(self) -> Context:
            return Context(self)

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            rec("Runtime")

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            rec("deserialize_cuda_engine", len(data))
            if not bytes(data).startswith(MAGIC):
                return None
            return Engine(json.loads(bytes(data)[len(MAGIC):]))

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt
