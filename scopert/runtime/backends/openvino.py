"""OpenVINO backend: the fast x86 CPU path, behind the same protocol as ONNX Runtime.

It reads the ONNX file directly, reshapes it to each tile shape it is given and caches one compiled
model per shape. Every compile sets the LATENCY hint, ``INFERENCE_NUM_THREADS`` equal to the cores and an
explicit ``INFERENCE_PRECISION_HINT`` (f32 unless bf16 was asked for: on bf16 CPUs OpenVINO's own default
is bf16, so it is never left implicit). Two asynchronous infer requests per compiled shape are kept in
flight: ``run`` pipelines the samples of a batch through them, and ``submit``/``collect`` lets a caller
overlap its own work with inference. THROUGHPUT is never used (with one synchronous request it halves the
speed). An op that OpenVINO cannot convert or compile raises ``UnsupportedOpError`` naming the ops, so
that the backend choice can fall back to ONNX Runtime with a warning.

Imports numpy and the standard library at module level; openvino only inside ``OpenVinoBackend``.
Never imports torch or onnx: the model card is read from the ONNX file's metadata_props with a
minimal protobuf walk.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scopert.errors import BackendError, InputError
from scopert.runtime.backends.base import Backend, BackendInfo
from scopert.runtime.onnx_file import onnx_metadata

log = logging.getLogger(__name__)

PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16"}
IN_FLIGHT = 2
COMPILED_SHAPES = 3  # tile shapes kept compiled; each holds its requests' activation memory until dropped


class UnsupportedOpError(BackendError):
    """OpenVINO cannot convert or compile some of the model's operations."""

    def __init__(self, ops: list[str], detail: str) -> None:
        self.ops = ops
        names = ", ".join(ops) if ops else "(unnamed)"
        super().__init__(f"OpenVINO cannot run the model's operation(s) {names} ({detail}). "
                         "Use --backend ort (ONNX Runtime), or re-export the model without these ops.")


def _import_ov():
    try:
        import openvino as ov
    except ImportError:
        raise BackendError(
            "OpenVINO is not installed. Install it with `pip install 'scopert[cpu]'` (or `pip install openvino`), "
            "or use --backend ort."
        ) from None
    return ov


def _metadata(path: str | Path) -> dict[str, str]:
    """The ONNX file's metadata (its card), or none when the bytes do not walk as a protobuf."""
    try:
        return onnx_metadata(path)
    except ValueError:
        log.debug("could not walk %s as a protobuf; no metadata", path)
        return {}


# ---- the backend ----------------------------------------------------------------------------------------
def _unconverted_ops(message: str) -> list[str]:
    """Op names from OpenVINO's 'No conversion rule found for operations: a, b' report."""
    found = re.findall(r"operations?:\s*([^\n]+)", message)
    ops: list[str] = []
    for line in found:
        ops += [o.strip() for o in line.split(",") if o.strip()]
    return ops


def _precision_name(value: Any) -> str:
    """'f32' or 'bf16' from an OpenVINO element type or its string form."""
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"float32": "f32", "bfloat16": "bf16"}.get(name.lower(), name.lower())


@dataclass
class _Compiled:
    """One compiled shape and its ring of infer requests."""

    compiled: Any
    requests: list
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Ticket:
    """A submitted batch: the requests it occupies, in sample order (see ``OpenVinoBackend.submit``)."""

    entry: _Compiled
    slots: list[int]
    outputs: list[np.ndarray | None]
    pending: list[int]
    inputs: list[np.ndarray]


class OpenVinoBackend(Backend):
    """OpenVINO on the CPU with an explicit precision, LATENCY hint and two requests in flight."""

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "f32",
                 device: str = "CPU") -> None:
        ov = _import_ov()
        path = Path(path)
        if not path.exists():
            raise InputError(f"model file {path} does not exist.")
        if precision not in PRECISIONS:
            raise BackendError(f"precision {precision!r} is not one OpenVINO runs here; use f32 or bf16.")
        self.precision = PRECISIONS[precision]
        self.threads = int(threads or os.cpu_count() or 1)
        self._ov = ov
        self._core = ov.Core()
        self._device = device
        try:
            self._model = self._core.read_model(str(path))
        except RuntimeError as exc:
            msg = str(exc)
            if "conversion" in msg.lower() or "not fully converted" in msg.lower():
                raise UnsupportedOpError(_unconverted_ops(msg), "no ONNX conversion rule") from None
            lines = [ln for ln in msg.splitlines() if ln.strip()]
            raise InputError(f"{path} is not a valid ONNX model (OpenVINO: {lines[-1][:200] if lines else 'unreadable'}). "
                             "Pass an ONNX file written by `scopert export`.") from None
        self._check_supported()
        self.input_name = self._model.inputs[0].get_any_name()
        self.output_name = self._model.outputs[0].get_any_name()
        self._rank = len(self._model.inputs[0].get_partial_shape())
        self.metadata = _metadata(path)
        self._cache: dict[tuple[int, ...], _Compiled] = {}
        self._cache_lock = threading.Lock()
        self.info = BackendInfo(
            name="openvino", device="cpu", precision="bf16" if self.precision == "bf16" else "fp32",
            providers=[f"OpenVINO {ov.get_version()} CPU"],
            reason=(f"OpenVINO {ov.get_version().split('-')[0]} CPU, LATENCY hint, {self.threads} threads, "
                    f"INFERENCE_PRECISION_HINT={self.precision}, {IN_FLIGHT} async requests"),
        )

    def _check_supported(self) -> None:
        """Ops the CPU plugin cannot take are found before the first tile, by name."""
        try:
            supported = self._core.query_model(self._model, self._device)
        except RuntimeError as exc:
            raise UnsupportedOpError([], str(exc).splitlines()[-1][:200]) from None
        missing = [f"{op.get_type_name()} ({op.get_friendly_name()})" for op in self._model.get_ops()
                   if op.get_friendly_name() not in supported]
        if missing:
            raise UnsupportedOpError(missing[:10], "the CPU plugin does not support them")

    @property
    def config(self) -> dict[str, Any]:
        """The compile properties, all explicit. A process that runs on a share of the cores (a Dask worker with
        one thread) does not pin its threads: OpenVINO pins to the first cores, so two such processes shared one
        core while the other idled (the cluster ran at 1.2 cores of 2)."""
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads,
                  "INFERENCE_PRECISION_HINT": self.precision}
        if self.threads < (os.cpu_count() or 1):
            config["ENABLE_CPU_PINNING"] = False
        return config

    def compiled_shapes(self) -> list[tuple[int, ...]]:
        return sorted(self._cache)

    def _compiled_for(self, shape: tuple[int, ...]) -> _Compiled:
        with self._cache_lock:
            entry = self._cache.pop(shape, None)
            if entry is not None:
                self._cache[shape] = entry  # the most recently used goes last
                return entry
            if len(shape) != self._rank:
                raise InputError(f"a tile batch of shape {shape} has {len(shape)} axes; the model takes "
                                 f"{self._rank} ({self.input_name} {self._model.inputs[0].get_partial_shape()}).")
            model = self._model.clone()
            try:
                model.reshape({model.inputs[0]: self._ov.PartialShape(list(shape))})
                compiled = self._core.compile_model(model, self._device, self.config)
            except RuntimeError as exc:
                last = [ln for ln in str(exc).splitlines() if ln.strip()]
                raise InputError(
                    f"the model cannot take a tile of shape {shape[2:]} (OpenVINO: {last[-1][:200] if last else exc}). "
                    "Choose a tile whose sizes are multiples of the model's divisor (see `scopert info`) and at "
                    "least twice its halo, e.g. a power of two."
                ) from None
            got = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
            if got != self.precision:
                log.warning("OpenVINO compiled %s with precision %s where %s was set", shape, got, self.precision)
            entry = _Compiled(compiled, [compiled.create_infer_request() for _ in range(IN_FLIGHT)])
            self._cache[shape] = entry
            while len(self._cache) > COMPILED_SHAPES:  # a run in flight on a dropped shape keeps its own reference
                del self._cache[next(iter(self._cache))]
            log.debug("OpenVINO compiled tile shape %s (%s)", shape, self.precision)
            return entry

    # ---- asynchronous use ---------------------------------------------------------------------------
    def submit(self, batch: np.ndarray) -> Ticket:
        """Start a batch (each sample on one of the two requests of its shape); ``collect`` returns it.

        One batch per tile shape is outstanding at a time: a second ``submit`` (or ``run``) of the same
        shape from another thread waits until the first is collected; the caller's thread must collect
        before it submits that shape again."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        entry = self._compiled_for((1,) + tuple(batch.shape[1:]))
        entry.lock.acquire()
        ticket = Ticket(entry, [], [None] * len(batch), [], [])
        try:
            for i in range(len(batch)):
                slot = i % IN_FLIGHT
                if i >= IN_FLIGHT:
                    self._finish(ticket, i - IN_FLIGHT)
                sample = batch[i:i + 1]
                ticket.inputs.append(sample)
                entry.requests[slot].start_async({0: sample}, share_inputs=True)
                ticket.slots.append(slot)
                ticket.pending.append(i)
        except BaseException:
            entry.lock.release()
            raise
        return ticket

    def _finish(self, ticket: Ticket, i: int) -> None:
        req = ticket.entry.requests[ticket.slots[i]]
        req.wait()
        ticket.outputs[i] = req.get_output_tensor(0).data.copy()
        ticket.pending.remove(i)

    def collect(self, ticket: Ticket) -> np.ndarray:
        """Wait for a submitted batch and return its outputs (B, ...)."""
        try:
            for i in list(ticket.pending):
                self._finish(ticket, i)
        finally:
            ticket.entry.lock.release()
        return np.concatenate(ticket.outputs, axis=0)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; its samples go through two requests in flight. Releases the GIL while waiting."""
        return self.collect(self.submit(batch))

    def close(self) -> None:
        """Drop the compiled shapes and their infer requests (OpenVINO frees them with the last reference)."""
        with self._cache_lock:
            self._cache.clear()

    def runtime_precisions(self, shape: tuple[int, ...]) -> dict[str, int]:
        """How many ops of the compiled shape run in each precision (from the runtime model's rt_info)."""
        counts: dict[str, int] = {}
        for op in self._compiled_for(shape).compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            if "runtimePrecision" in rt:
                key = str(rt["runtimePrecision"].astype(str))
                counts[key] = counts.get(key, 0) + 1
        return counts


def open_openvino(path: str | Path, device: str = "auto", threads: int | None = None,
                  precision: str = "f32") -> Backend:
    """The registry's opener: OpenVINO on the CPU at ``precision`` (an op it cannot run raises
    ``UnsupportedOpError``, and the selection layer falls back to the entry's fallback engine)."""
    if device == "cuda":
        raise BackendError("--backend openvino runs on the CPU; drop --device cuda or use --backend ort or trt.")
    return OpenVinoBackend(path, threads=threads, precision=precision)
