"""TensorRT backend: a ``.engine`` built by ``scopert build``, driven with cuda-python (never pycuda).

Before TensorRT sees the file, its sidecar card is checked against this GPU and TensorRT version and the
engine's sha256 (``engine_key.check_engine``). Then: deserialize; ``slots`` in-flight batches, each with its
own execution context on its own optimization profile (the builder writes one identical profile per slot, as
concurrent contexts must not share one), non-blocking stream, pinned host buffers, device buffers and events.
The ``done`` event a host thread waits on is a blocking-sync event (the thread sleeps, it does not spin).
``submit`` copies a batch into a free slot's pinned buffer, sets the input shape and tensor addresses, and
enqueues H2D copy, ``execute_async_v3`` and D2H copy on the slot's stream; ``collect`` waits on the slot's
event. Consecutive batches run on different streams, so one batch's copies overlap another's compute.
A batch outside the optimization profile is refused before any CUDA call.

``tensorrt`` and ``cuda.bindings`` are imported lazily (tests inject fakes). Imports numpy; never torch/onnx.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from scopert.card import METADATA_KEY
from scopert.errors import BackendError, InputError
from scopert.runtime.backends.base import Backend, BackendInfo
from scopert.runtime.backends.cuda_adapter import D2H, H2D
from scopert.runtime.backends.engine_key import DEFAULT_PROFILES, GpuInfo, ProfileShapes, check_engine

log = logging.getLogger(__name__)

DEFAULT_SLOTS = DEFAULT_PROFILES


@dataclass
class Slot:
    """One in-flight batch: its own context, stream, pinned host and device buffers, and events."""

    index: int
    context: Any
    stream: Any
    host_in: tuple[int, np.ndarray]
    host_out: tuple[int, np.ndarray]
    dev_in: int
    dev_out: int
    done: Any
    started: Any
    busy: bool = False
    out_shape: tuple[int, ...] = ()
    timings: list[float] = field(default_factory=list)


def _dtype(trt: Any, trt_dtype: Any) -> np.dtype:
    table = {getattr(trt, "float32", None): np.float32, getattr(trt, "float16", None): np.float16,
             getattr(trt, "int32", None): np.int32, getattr(trt, "int8", None): np.int8,
             getattr(trt, "uint8", None): np.uint8}
    if trt_dtype not in table:
        raise BackendError(f"the engine uses I/O dtype {trt_dtype}, which ScopeRT does not feed; rebuild from a "
                           "ScopeRT ONNX (FP32 inputs and outputs).")
    return np.dtype(table[trt_dtype])


class TrtBackend(Backend):
    """The backend contract with ``slots`` batches in flight (``submit``/``collect``), plus ``run_many``."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None, *, slots: int = DEFAULT_SLOTS,
                 trt: Any = None, cuda: Any = None) -> None:
        del threads
        if device == "cpu":
            raise BackendError("--backend trt runs on the GPU; drop --device cpu or use --backend ort.")
        path = Path(path)
        if trt is None or cuda is None:
            trt, cuda = _import_trt_and_cuda(trt, cuda)
        self.path = path
        self._trt = trt
        self._cuda = cuda
        self._closed = False
        self._pending: deque[int] = deque()
        self._next = 0
        name, major, minor = self._cuda.device_properties(0)
        here = GpuInfo(name, f"{major}.{minor}", str(self._trt.__version__))
        self.card, self.key = check_engine(path, here)  # before any deserialization
        self.profile: ProfileShapes = self.key.profile
        try:
            runtime = self._trt.Runtime(self._trt.Logger(self._trt.Logger.WARNING))
        except TypeError:  # pybind11 "factory function returned nullptr": CUDA could not initialize
            raise BackendError("TensorRT could not start its runtime (CUDA initialization failed; `scopert doctor` "
                               "names the cause). Use --backend ort with the model's .onnx file.") from None
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise InputError(f"TensorRT cannot deserialize {path} (corrupt or from another TensorRT build). Rebuild it "
                             "with `scopert build MODEL.onnx --rebuild`.")
        self._runtime, self.engine = runtime, engine
        self.input_name, self.output_name = self._io_names()
        self.in_dtype = _dtype(self._trt, engine.get_tensor_dtype(self.input_name))
        self.out_dtype = _dtype(self._trt, engine.get_tensor_dtype(self.output_name))
        # the card travels with the backend, so ``load(model.onnx)`` that ``auto`` sent to an engine has it too
        self.metadata: dict[str, str] = {METADATA_KEY: self.card.to_json(indent=None)}
        profiles = int(getattr(engine, "num_optimization_profiles", 1) or 1)
        n_slots = max(1, min(int(slots), profiles))
        if n_slots < int(slots):
            log.warning("engine %s has %d optimization profile(s): %d slot(s) in flight, not %d (concurrent contexts "
                        "must not share a profile). Rebuild with `scopert build` for more.", path.name, profiles,
                        n_slots, int(slots))
        self._slots: list[Slot] = []
        try:
            for i in range(n_slots):
                self._slots.append(self._make_slot(i))
        except BaseException:
            self.close()  # free what the slots made so far hold
            raise
        self.info = BackendInfo(name="trt", device="cuda", precision=self.key.precision, providers=["TensorRT"],
                                reason=f"TensorRT {self._trt.__version__} engine on {name} ({self.key.precision}, "
                                       f"{len(self._slots)} slots)")

    # ---- set-up -------------------------------------------------------------------------------------------
    def _io_names(self) -> tuple[str, str]:
        inputs, outputs = [], []
        mode_input = self._trt.TensorIOMode.INPUT
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            (inputs if self.engine.get_tensor_mode(name) == mode_input else outputs).append(name)
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"engine {self.path.name} has inputs {inputs} and outputs {outputs}; ScopeRT runs "
                               "models with one input and one output.")
        if inputs[0] != self.profile.input_name:
            raise BackendError(f"engine input {inputs[0]!r} differs from its card ({self.profile.input_name!r}); "
                               "rebuild the engine.")
        return inputs[0], outputs[0]

    def output_shape_for(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape for an input shape, from the card's axes and scale (no CUDA call)."""
        spec_in, spec_out = self.card.input, self.card.output
        dims = dict(zip(spec_in.axes, shape))
        out = []
        for ax in spec_out.axes:
            if ax == "c":
                out.append(spec_out.channels)
            elif ax in dims:
                out.append(int(round(dims[ax] * float(spec_out.scale.get(ax, 1.0)))))
            else:
                out.append(1)
        return tuple(out)

    def _make_slot(self, index: int) -> Slot:
        cuda = self._cuda
        max_in = self.profile.max
        in_bytes = int(np.prod(max_in)) * self.in_dtype.itemsize
        out_bytes = int(np.prod(self.output_shape_for(max_in))) * self.out_dtype.itemsize
        context = self.engine.create_execution_context()
        if context is None:
            raise BackendError("TensorRT could not create an execution context (GPU memory full?). Use a smaller "
                               "batch or tile, or fewer slots.")
        stream = cuda.stream_create()
        if not context.set_optimization_profile_async(index, cuda.stream_handle(stream)):
            raise BackendError(f"TensorRT refused optimization profile {index} for slot {index} of {self.path.name}; "
                               "rebuild the engine with `scopert build MODEL.onnx --rebuild`.")
        return Slot(index=index, context=context, stream=stream, host_in=cuda.malloc_host(in_bytes),
                    host_out=cuda.malloc_host(out_bytes), dev_in=cuda.malloc(in_bytes), dev_out=cuda.malloc(out_bytes),
                    done=cuda.event_create(blocking_sync=True), started=cuda.event_create())

    def tile_range(self) -> dict[str, tuple[int, int, int]]:
        """(min, opt, max) per tiled axis of the engine's profile: ``Model.default_tile`` uses opt."""
        p = self.profile
        return {ax: (lo, op, hi) for ax, lo, op, hi in zip(self.card.input.axes, p.min, p.opt, p.max) if ax in "tzyx"}

    # ---- checks ---------------------------------------------------------------------------------------------
    def check_batch(self, batch: np.ndarray) -> None:
        """Shape and values against the profile: an InputError before any CUDA call."""
        shape = tuple(int(s) for s in batch.shape)
        p = self.profile
        if not p.contains(shape):
            raise InputError(
                f"batch shape {shape} is outside the engine's optimization profile (min {p.min}, max {p.max}). "
                f"Use tiles and batches within it (e.g. --batch {p.max[0]} -B "
                f"{','.join(str(s) for a, s in zip(self.card.input.axes, p.max) if a in 'zyx')}), or rebuild with "
                "`scopert build MODEL.onnx --tile ... --batch ...` for larger ones."
            )

    # ---- async API -----------------------------------------------------------------------------------------
    def submit(self, batch: np.ndarray) -> int:
        """Enqueue one batch on a free slot; returns the slot index for ``collect``."""
        batch = np.ascontiguousarray(batch, dtype=self.in_dtype)
        self.check_batch(batch)
        slot = self._slots[self._next]
        if slot.busy:
            raise BackendError("all TRT slots are in flight; collect a result before submitting another batch.")
        self._next = (self._next + 1) % len(self._slots)
        cuda, ctx = self._cuda, slot.context
        nbytes = batch.nbytes
        slot.host_in[1][:nbytes] = batch.view(np.uint8).reshape(-1)
        if not ctx.set_input_shape(self.input_name, batch.shape):
            raise InputError(f"TensorRT refused input shape {batch.shape} (profile {self.profile.min}..{self.profile.max}).")
        out_shape = tuple(int(s) for s in ctx.get_tensor_shape(self.output_name))
        if any(s < 0 for s in out_shape):
            raise BackendError(f"TensorRT could not infer the output shape for {batch.shape}; rebuild the engine.")
        slot.out_shape = out_shape
        out_bytes = int(np.prod(out_shape)) * self.out_dtype.itemsize
        if out_bytes > slot.host_out[1].nbytes:
            raise BackendError(f"output {out_shape} is larger than the buffers sized from the card; rebuild the engine.")
        ctx.set_tensor_address(self.input_name, slot.dev_in)
        ctx.set_tensor_address(self.output_name, slot.dev_out)
        cuda.event_record(slot.started, slot.stream)
        cuda.memcpy_async(slot.dev_in, slot.host_in[0], nbytes, H2D, slot.stream)
        if not ctx.execute_async_v3(cuda.stream_handle(slot.stream)):
            raise BackendError("TensorRT execute_async_v3 failed (see the TensorRT log).")
        cuda.memcpy_async(slot.host_out[0], slot.dev_out, out_bytes, D2H, slot.stream)
        cuda.event_record(slot.done, slot.stream)
        slot.busy = True
        self._pending.append(slot.index)
        return slot.index

    def collect(self, ticket: int) -> np.ndarray:
        slot = self._slots[ticket]
        if not slot.busy:
            raise BackendError(f"slot {ticket} has no batch in flight.")
        self._cuda.event_synchronize(slot.done)
        n = int(np.prod(slot.out_shape)) * self.out_dtype.itemsize
        out = slot.host_out[1][:n].view(self.out_dtype).reshape(slot.out_shape).astype(np.float32, copy=True)
        slot.busy = False
        if ticket in self._pending:
            self._pending.remove(ticket)
        return out

    @property
    def max_in_flight(self) -> int:
        """How many submitted batches may be outstanding: one per slot (the pipeline keeps them all busy)."""
        return len(self._slots)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.collect(self.submit(batch))

    def run_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Results in order, with up to ``slots`` batches in flight (double buffering or more)."""
        inflight: deque[int] = deque()
        for batch in batches:
            if len(inflight) == len(self._slots):
                yield self.collect(inflight.popleft())
            inflight.append(self.submit(batch))
        while inflight:
            yield self.collect(inflight.popleft())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for slot in self._slots:
            if slot.busy:
                self._cuda.event_synchronize(slot.done)
            self._cuda.free_host(slot.host_in[0])
            self._cuda.free_host(slot.host_out[0])
            self._cuda.free(slot.dev_in)
            self._cuda.free(slot.dev_out)
            self._cuda.event_destroy(slot.done)
            self._cuda.event_destroy(slot.started)
            self._cuda.stream_destroy(slot.stream)


def _import_trt_and_cuda(trt: Any, cuda: Any) -> tuple[Any, Any]:
    """The real tensorrt and cuda-python (a clear error when either is missing)."""
    if trt is None:
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendError(
                "TensorRT is not installed, so the .engine cannot run here. Run the model's ONNX with ONNX Runtime "
                "instead: `--backend ort` with the .onnx file."
            ) from None
    if cuda is None:
        from scopert.runtime.backends.cuda_adapter import CudaRuntime

        cuda = CudaRuntime.load()
    return trt, cuda
