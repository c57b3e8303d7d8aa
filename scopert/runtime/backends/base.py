"""The backend contract and the one registry of backends: what tiling, stitching and streaming need.

Every backend subclasses ``Backend`` and so has the whole contract: ``run``; ``submit``/``collect`` with
``max_in_flight`` (the default computes at submit, one in flight); ``info``; ``tile_range``; ``close``; and the
context manager. ``REGISTRY`` names each backend once, as Polygraphy keeps its runners: the CLI's ``--backend``
choices, ``open_backend`` and ``scopert doctor`` read it. Adding a backend is its module plus one entry here.
Imports the standard library only (numpy for type hints), never an inference engine.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import numpy as np

AUTO = "auto"


@dataclass
class BackendInfo:
    """What was chosen and why; printed by ``scopert doctor`` and logged by every run."""

    name: str
    device: str
    precision: str = "fp32"
    providers: list[str] = field(default_factory=list)
    reason: str = ""


class Backend(ABC):
    """One opened model on one engine. Subclasses set ``info``, ``input_name``, ``output_name`` and
    ``metadata`` in ``__init__`` and implement ``run``; those that overlap work override ``submit``,
    ``collect`` and ``max_in_flight``; those that hold memory, streams or sessions override ``close``."""

    info: BackendInfo
    input_name: str
    output_name: str
    metadata: dict[str, str]
    max_in_flight: int = 1  # batches submitted and not yet collected; the pipeline keeps this many busy

    @abstractmethod
    def run(self, batch: "np.ndarray") -> "np.ndarray":
        """Run one batch in the model's own layout (float32) and return the output batch."""

    def submit(self, batch: "np.ndarray") -> Any:
        """Start a batch; ``collect(ticket)`` returns its output. By default it runs now (no overlap)."""
        return self.run(batch)

    def collect(self, ticket: Any) -> "np.ndarray":
        """The output of a submitted batch (by default the ticket is the output itself)."""
        return ticket

    def tile_range(self) -> dict[str, tuple[int, int, int]]:
        """(min, opt, max) per tiled axis where the backend has fixed shapes (a TensorRT profile); else empty."""
        return {}

    def close(self) -> None:
        """Free what the backend holds (GPU buffers, streams, sessions). Idempotent."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class BackendEntry:
    """One engine, declared once: its name on the command line, what opens it, which files it runs, how to tell
    that it is installed, where it runs, the precisions it runs, and its place in ``auto``'s order. ``load``,
    ``auto`` (``selection.choice``), ``doctor`` and the precision choice read these; they name no engine."""

    name: str
    opener: str  # "module:callable" (path, device, threads[, precision]) -> Backend; precision if it runs several
    suffixes: tuple[str, ...]  # files it runs; a suffix other than .onnx is a built engine only it runs
    summary: str
    title: str = ""  # how messages name it ("OpenVINO")
    probe: str = ""  # the Python module whose presence says the engine is installed
    install: str = "cpu"  # the scopert extra that installs it
    devices: tuple[str, ...] = ("cpu",)
    precisions: tuple[str, ...] = ("f32",)
    priority: dict[str, int] = field(default_factory=dict)  # per device: lower goes first in ``auto``
    machines: tuple[str, ...] = ()  # CPU architectures it runs on (empty: any)
    cuda_provider: str = ""  # on 'cuda': a provider the engine must list (ONNX Runtime's CUDA provider)
    built_engine: bool = False  # on 'cuda' for an ONNX file: runs only an engine built for it (``scopert build``)
    fallback: str = ""  # the engine that runs a model whose ops this one cannot

    def load_opener(self) -> Callable[..., Backend]:
        module, _, attr = self.opener.partition(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def engine_suffixes(self) -> tuple[str, ...]:
        return tuple(s for s in self.suffixes if s != ".onnx")


X86 = ("x86_64", "amd64", "i686", "x86")

REGISTRY: dict[str, BackendEntry] = {e.name: e for e in (
    BackendEntry("ort", "scopert.runtime.backends.ort:OrtBackend", (".onnx",),
                 "ONNX Runtime: the portable CPU default; CUDA/TensorRT providers when installed",
                 title="ONNX Runtime", probe="onnxruntime", devices=("cuda", "cpu"),
                 priority={"cuda": 20, "cpu": 40}, cuda_provider="CUDAExecutionProvider"),
    BackendEntry("openvino", "scopert.runtime.backends.openvino:open_openvino", (".onnx",),
                 "OpenVINO on x86 CPUs (falls back to ONNX Runtime for ops it cannot run)",
                 title="OpenVINO", probe="openvino", precisions=("f32", "bf16", "int8"), priority={"cpu": 30},
                 machines=X86, fallback="ort"),
    BackendEntry("trt", "scopert.runtime.backends.trt:TrtBackend", (".engine", ".plan"),
                 "a TensorRT engine built by `scopert build`, driven with cuda-python",
                 title="TensorRT", probe="tensorrt", install="gpu", devices=("cuda",), precisions=("fp16", "f32"),
                 priority={"cuda": 10}, built_engine=True),
)}


def backend_choices() -> tuple[str, ...]:
    """The ``--backend`` values: ``auto`` and every registered backend."""
    return (AUTO, *REGISTRY)


def engine_suffixes() -> tuple[str, ...]:
    """File suffixes that only an engine backend runs (``.engine``, ``.plan``)."""
    return tuple(s for e in REGISTRY.values() for s in e.engine_suffixes)


def model_suffixes() -> tuple[str, ...]:
    """Every file suffix some registered engine runs (what ``load`` accepts)."""
    return tuple(dict.fromkeys(s for e in REGISTRY.values() for s in e.suffixes))


def by_priority(device: str = "auto") -> list[tuple[BackendEntry, str]]:
    """(engine, device) pairs in ``auto``'s order, on ``device`` ('auto': every device)."""
    pairs = [(e, d) for e in REGISTRY.values() for d in e.devices if device in ("auto", d)]
    return sorted(pairs, key=lambda pair: pair[0].priority.get(pair[1], 1000))
