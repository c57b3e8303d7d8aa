"""A fake of cuda-python's ``cuda.bindings.runtime`` module (the API itself, not ScopeRT's adapter).

What it keeps of the real module, so ``scopert.runtime.backends.cuda_adapter.CudaRuntime`` runs against it
unchanged:

- every call returns a tuple whose first item is a ``cudaError_t`` member, then the values (``(err,)`` for
  calls without one; ``(err, None)`` on failure, as cuda-python returns on a driver-less box);
- the enum and constant names: ``cudaError_t``, ``cudaMemcpyKind``, ``cudaStreamNonBlocking``,
  ``cudaEventDefault``, ``cudaEventBlockingSync``, ``cudaEventDisableTiming``; handle types
  ``cudaStream_t``/``cudaEvent_t`` that ``int()`` turns into the raw handle (what ``execute_async_v3`` takes);
- ``cudaGetDeviceCount`` fails with ``cudaErrorInsufficientDriver`` when the driver's CUDA version is older
  than the runtime's major (a CUDA-13 cuda-python on an R5xx < 580 driver), ``cudaErrorNoDevice`` without a GPU;
- streams run their work in order and only when something waits for it: an event completes exactly the work
  queued on its stream before it was recorded; another stream's work does not run; a host buffer read
  before the wait holds stale bytes;
- events created without ``cudaEventBlockingSync`` busy-wait in ``cudaEventSynchronize`` (counted in
  ``spin_waits``); ``cudaEventElapsedTime`` needs two completed timing events (``cudaErrorNotReady``,
  ``cudaErrorInvalidResourceHandle`` for ``cudaEventDisableTiming``) and returns the simulated milliseconds;
- device and pinned memory are real host allocations (pinned pointers are real addresses, as the adapter
  wraps them in numpy views); a kernel or copy that touches a host pointer as device memory is an illegal
  address, reported by the next synchronizing call, as CUDA's sticky errors are.
"""

from __future__ import annotations

import ctypes
import enum
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInitializationError = 3
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorNotReady = 600
    cudaErrorIllegalAddress = 700


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


cudaStreamDefault = 0  # noqa: N816
cudaStreamNonBlocking = 1  # noqa: N816
cudaEventDefault = 0  # noqa: N816
cudaEventBlockingSync = 1  # noqa: N816
cudaEventDisableTiming = 2  # noqa: N816
cudaEventInterprocess = 4  # noqa: N816

OK = cudaError_t.cudaSuccess


class _Handle:
    def __init__(self, value: int) -> None:
        self._value = value

    def __int__(self) -> int:
        return self._value

    def getPtr(self) -> int:  # noqa: N802 - cuda-python's name
        return self._value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 0x{self._value:x}>"


class cudaStream_t(_Handle):  # noqa: N801
    pass


class cudaEvent_t(_Handle):  # noqa: N801
    pass


@dataclass
class cudaDeviceProp:  # noqa: N801
    name: bytes
    major: int
    minor: int
    multiProcessorCount: int = 132  # noqa: N815
    totalGlobalMem: int = 80 << 30  # noqa: N815


@dataclass
class _Stream:
    handle: int
    flags: int
    queue: list[tuple[Callable[[], None], float]] = field(default_factory=list)
    enqueued: int = 0
    executed: int = 0
    clock_ms: float = 0.0


@dataclass
class _Event:
    handle: int
    flags: int
    stream: int | None = None
    seq: int = 0
    time_ms: float | None = None


class FakeCudaRuntimeModule:
    """Stands in for ``cuda.bindings.runtime``; attributes beyond the real API are test hooks."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStream_t = cudaStream_t
    cudaEvent_t = cudaEvent_t
    cudaStreamDefault = cudaStreamDefault
    cudaStreamNonBlocking = cudaStreamNonBlocking
    cudaEventDefault = cudaEventDefault
    cudaEventBlockingSync = cudaEventBlockingSync
    cudaEventDisableTiming = cudaEventDisableTiming
    cudaEventInterprocess = cudaEventInterprocess

    def __init__(self, name: str = "NVIDIA H100 80GB HBM3", cc: tuple[int, int] = (9, 0), devices: int = 1,
                 driver_version: int = 12080, runtime_version: int = 12080, copy_gb_s: float = 25.0,
                 device_bytes: int = 1 << 30) -> None:
        self.name, self.cc, self.devices = name, cc, devices
        self.driver_version, self.runtime_version = driver_version, runtime_version
        self.copy_gb_s = copy_gb_s
        self.device_bytes = device_bytes  # cudaMalloc beyond this total fails with cudaErrorMemoryAllocation
        self.device_mem: dict[int, Any] = {}  # ptr -> ctypes buffer
        self.pinned: dict[int, Any] = {}
        self.streams: dict[int, _Stream] = {}
        self.events: dict[int, _Event] = {}
        self.calls: list[str] = []
        self.spin_waits = 0  # cudaEventSynchronize on events without cudaEventBlockingSync
        self.pageable_copies = 0  # async copies from/to pageable host memory (synchronous in CUDA)
        self.max_busy_streams = 0  # most streams holding unfinished work at once
        self._sticky: cudaError_t | None = None
        self._next_handle = 0x7000

    # ---- test hooks -------------------------------------------------------------------------------------
    def _handle(self) -> int:
        self._next_handle += 0x10
        return self._next_handle

    def _ready(self) -> cudaError_t | None:
        """The error a call reports before doing anything (no driver, no device, sticky error)."""
        if self.driver_version // 1000 < self.runtime_version // 1000:
            return cudaError_t.cudaErrorInsufficientDriver
        if self.devices < 1:
            return cudaError_t.cudaErrorNoDevice
        return self._sticky

    def _find(self, table: dict[int, Any], ptr: int, nbytes: int) -> bool:
        for base, buf in table.items():
            if base <= ptr and ptr + nbytes <= base + ctypes.sizeof(buf):
                return True
        return False

    def device_view(self, ptr: int, nbytes: int) -> np.ndarray:
        """A uint8 view of ``nbytes`` device bytes at ``ptr`` (an illegal address unless cudaMalloc'ed)."""
        if not self._find(self.device_mem, int(ptr), nbytes):
            self._sticky = cudaError_t.cudaErrorIllegalAddress
            raise _IllegalAddress(f"device access to 0x{int(ptr):x} (+{nbytes} bytes) outside cudaMalloc memory")
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(int(ptr)))

    def enqueue(self, stream_handle: int, work: Callable[[], None], ms: float) -> None:
        """Queue work on a stream (what a kernel launch does); it runs when something waits for it."""
        stream = self.streams.get(int(stream_handle))
        if stream is None:
            raise AssertionError(f"work launched on unknown stream {stream_handle!r} (the legacy default stream?)")
        stream.queue.append((work, ms))
        stream.enqueued += 1
        busy = sum(1 for s in self.streams.values() if s.executed < s.enqueued)
        self.max_busy_streams = max(self.max_busy_streams, busy)

    def _run_until(self, stream: _Stream, seq: int) -> None:
        while stream.executed < seq:
            work, ms = stream.queue.pop(0)
            try:
                work()
            except _IllegalAddress:
                pass  # sticky error set; later calls report it
            stream.executed += 1
            stream.clock_ms += ms
            for ev in self.events.values():
                if ev.stream == stream.handle and ev.seq == stream.executed and ev.time_ms is None:
                    ev.time_ms = stream.clock_ms

    def in_flight(self) -> int:
        return sum(s.enqueued - s.executed for s in self.streams.values())

    # ---- device -----------------------------------------------------------------------------------------
    def cudaDriverGetVersion(self):  # noqa: N802
        self.calls.append("cudaDriverGetVersion")
        return OK, self.driver_version

    def cudaRuntimeGetVersion(self):  # noqa: N802
        self.calls.append("cudaRuntimeGetVersion")
        return OK, self.runtime_version

    def cudaGetDeviceCount(self):  # noqa: N802
        self.calls.append("cudaGetDeviceCount")
        err = self._ready()
        if err in (cudaError_t.cudaErrorInsufficientDriver, cudaError_t.cudaErrorNoDevice):
            return err, None
        return OK, self.devices

    def cudaGetDeviceProperties(self, device: int):  # noqa: N802
        self.calls.append("cudaGetDeviceProperties")
        err = self._ready()
        if err is not None:
            return err, None
        if not 0 <= int(device) < self.devices:
            return cudaError_t.cudaErrorInvalidDevice, None
        return OK, cudaDeviceProp(self.name.encode() + b"\x00" * (256 - len(self.name)), *self.cc)

    def cudaGetErrorString(self, err: cudaError_t):  # noqa: N802
        return OK, f"{cudaError_t(err).name}".encode()

    # ---- memory -----------------------------------------------------------------------------------------
    def _alloc(self, table: dict[int, Any], size: int):
        err = self._ready()
        if err is not None:
            return err, None
        if int(size) <= 0:
            return cudaError_t.cudaErrorInvalidValue, None
        buf = (ctypes.c_uint8 * int(size))()
        ptr = ctypes.addressof(buf)
        table[ptr] = buf
        return OK, ptr

    def cudaMalloc(self, size: int):  # noqa: N802
        self.calls.append("cudaMalloc")
        used = sum(ctypes.sizeof(b) for b in self.device_mem.values())
        if used + int(size) > self.device_bytes:
            return cudaError_t.cudaErrorMemoryAllocation, None
        return self._alloc(self.device_mem, size)

    def cudaMallocHost(self, size: int):  # noqa: N802
        self.calls.append("cudaMallocHost")
        return self._alloc(self.pinned, size)

    def cudaFree(self, ptr: int):  # noqa: N802
        self.calls.append("cudaFree")
        if self.device_mem.pop(int(ptr), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (OK,)

    def cudaFreeHost(self, ptr: int):  # noqa: N802
        self.calls.append("cudaFreeHost")
        if self.pinned.pop(int(ptr), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (OK,)

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: cudaMemcpyKind, stream: Any):  # noqa: N802
        self.calls.append("cudaMemcpyAsync")
        err = self._ready()
        if err is not None:
            return (err,)
        dst, src, count = int(dst), int(src), int(count)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            host, dev = src, dst
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            host, dev = dst, src
        else:
            return (cudaError_t.cudaErrorInvalidValue,)
        if not self._find(self.device_mem, dev, count):
            return (cudaError_t.cudaErrorInvalidValue,)
        if not self._find(self.pinned, host, count):
            self.pageable_copies += 1

        def copy() -> None:
            ctypes.memmove(dst, src, count)

        self.enqueue(int(stream), copy, count / (self.copy_gb_s * 1e6))
        return (OK,)

    # ---- streams and events ------------------------------------------------------------------------------
    def cudaStreamCreateWithFlags(self, flags: int):  # noqa: N802
        self.calls.append("cudaStreamCreateWithFlags")
        err = self._ready()
        if err is not None:
            return err, None
        h = self._handle()
        self.streams[h] = _Stream(h, int(flags))
        return OK, cudaStream_t(h)

    def cudaStreamDestroy(self, stream: Any):  # noqa: N802
        self.calls.append("cudaStreamDestroy")
        s = self.streams.pop(int(stream), None)
        if s is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (OK,)

    def cudaStreamSynchronize(self, stream: Any):  # noqa: N802
        self.calls.append("cudaStreamSynchronize")
        s = self.streams.get(int(stream))
        if s is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        self._run_until(s, s.enqueued)
        return (self._sticky or OK,)

    def _event(self, flags: int):
        err = self._ready()
        if err is not None:
            return err, None
        h = self._handle()
        self.events[h] = _Event(h, int(flags))
        return OK, cudaEvent_t(h)

    def cudaEventCreate(self):  # noqa: N802
        self.calls.append("cudaEventCreate")
        return self._event(cudaEventDefault)

    def cudaEventCreateWithFlags(self, flags: int):  # noqa: N802
        self.calls.append("cudaEventCreateWithFlags")
        return self._event(int(flags))

    def cudaEventRecord(self, event: Any, stream: Any):  # noqa: N802
        self.calls.append("cudaEventRecord")
        ev, s = self.events.get(int(event)), self.streams.get(int(stream))
        if ev is None or s is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        ev.stream, ev.seq = s.handle, s.enqueued
        ev.time_ms = s.clock_ms if s.executed == s.enqueued else None
        return (OK,)

    def cudaEventQuery(self, event: Any):  # noqa: N802
        ev = self.events.get(int(event))
        if ev is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        done = ev.stream is None or self.streams[ev.stream].executed >= ev.seq
        return (OK if done else cudaError_t.cudaErrorNotReady,)

    def cudaEventSynchronize(self, event: Any):  # noqa: N802
        self.calls.append("cudaEventSynchronize")
        ev = self.events.get(int(event))
        if ev is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if not ev.flags & cudaEventBlockingSync:
            self.spin_waits += 1
        if ev.stream is not None:
            self._run_until(self.streams[ev.stream], ev.seq)
        return (self._sticky or OK,)

    def cudaEventElapsedTime(self, start: Any, end: Any):  # noqa: N802
        self.calls.append("cudaEventElapsedTime")
        a, b = self.events.get(int(start)), self.events.get(int(end))
        if a is None or b is None or (a.flags | b.flags) & cudaEventDisableTiming:
            return cudaError_t.cudaErrorInvalidResourceHandle, None
        if a.time_ms is None or b.time_ms is None:
            return cudaError_t.cudaErrorNotReady, None
        return OK, float(b.time_ms - a.time_ms)

    def cudaEventDestroy(self, event: Any):  # noqa: N802
        self.calls.append("cudaEventDestroy")
        if self.events.pop(int(event), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (OK,)


class _IllegalAddress(Exception):
    pass
