"""A thin adapter over cuda-python's runtime API (``cuda.bindings.runtime``): the few calls the TRT backend needs.

Every call checks the returned ``cudaError_t`` and raises ``BackendError`` naming the call, so a CUDA failure is
never a bare tuple. Pinned host memory is exposed as a numpy view. ``cuda.bindings`` is imported only in
``CudaRuntime.load``; tests run this class unchanged against a fake of the ``cuda.bindings.runtime`` module
(``tests/fakes/fake_cudart.py``). Imports numpy and the standard library.

Two choices matter on a small acquisition PC: streams are non-blocking (no implicit sync with the legacy
default stream), and the events a host thread waits on are created with ``cudaEventBlockingSync``, so the
waiting thread sleeps instead of spinning on a core that the reader and stitcher threads need.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from scopert.errors import BackendError

H2D, D2H = "h2d", "d2h"
INSUFFICIENT_DRIVER = "cudaErrorInsufficientDriver"
NO_DEVICE = "cudaErrorNoDevice"


def cuda_version_text(version: int) -> str:
    """CUDA's integer version (12040) as '12.4'; '0' means no driver."""
    return f"{version // 1000}.{(version % 1000) // 10}" if version else "none"


@dataclass(frozen=True)
class CudaProbe:
    """What cuda-python sees: device count (or the error instead), driver and runtime CUDA versions."""

    devices: int
    error: str  # "" when cudaGetDeviceCount succeeded
    driver_version: int  # 12040 = CUDA 12.4; 0 = no driver
    runtime_version: int

    @property
    def driver_too_old(self) -> bool:
        return self.error == INSUFFICIENT_DRIVER or (
            self.driver_version > 0 and self.driver_version // 1000 < self.runtime_version // 1000)

    def explain(self) -> str:
        """One line naming the cause and the fix (doctor prints it; ``load`` raises it)."""
        drv, rt = cuda_version_text(self.driver_version), cuda_version_text(self.runtime_version)
        if self.driver_too_old:
            major = self.runtime_version // 1000
            return (f"driver/runtime mismatch: the NVIDIA driver supports CUDA {drv}, but this cuda-python is built "
                    f"for CUDA {rt} ({INSUFFICIENT_DRIVER}). Install the build for your driver: "
                    f"`pip install 'scopert[gpu-cu{self.driver_version // 1000}]'` (cuda-python<{major}), or upgrade "
                    "the driver" + (" to R580+ for CUDA 13." if major >= 13 else "."))
        if self.error == NO_DEVICE or (not self.error and self.devices < 1):
            return (f"no NVIDIA GPU is visible to CUDA (driver CUDA {drv}); check CUDA_VISIBLE_DEVICES and "
                    "nvidia-smi, or use --backend ort (ONNX Runtime) on this machine.")
        if self.error:
            return (f"CUDA cannot start ({self.error}; driver CUDA {drv}, cuda-python CUDA {rt}). Check the NVIDIA "
                    "driver with nvidia-smi, or use --backend ort.")
        return f"{self.devices} GPU(s); driver CUDA {drv}, cuda-python runtime CUDA {rt}"


def import_cudart() -> Any:
    """``cuda.bindings.runtime`` (cuda-python >= 12.6), or the older ``cuda.cudart`` module."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise BackendError(
                "cuda-python is not installed (`cuda.bindings` cannot be imported); the TensorRT backend needs it. "
                "Install `pip install 'scopert[gpu-cu12]'` (CUDA 12 driver) or `'scopert[gpu-cu13]'` (R580+ "
                "driver), or use --backend ort."
            ) from None
    return cudart


class CudaRuntime:
    """Device/pinned memory, streams, events and async copies on one GPU."""

    def __init__(self, cudart: Any) -> None:
        self._rt = cudart

    @classmethod
    def load(cls, cudart: Any = None) -> "CudaRuntime":
        rt = cls(cudart if cudart is not None else import_cudart())
        probe = rt.probe()
        if probe.error or probe.devices < 1:
            raise BackendError(probe.explain())
        return rt

    # ---- helpers ------------------------------------------------------------------------------------------
    @staticmethod
    def _name(err: Any) -> str:
        return str(getattr(err, "name", err))

    def _check(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise BackendError(
                f"CUDA {what} failed ({self._name(err)}). Check the NVIDIA driver (cuda-python's major version must "
                "match it; `scopert doctor` names a mismatch) or use --backend ort."
            )
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else tuple(rest)

    def _version(self, fn: str) -> int:
        call = getattr(self._rt, fn, None)
        if call is None:
            return 0
        err, value = call()
        return int(value) if int(err) == 0 and value is not None else 0

    def probe(self) -> CudaProbe:
        """Device count and versions without raising: the error name says why there is no GPU."""
        err, count = self._rt.cudaGetDeviceCount()
        ok = int(err) == 0
        return CudaProbe(int(count) if ok else 0, "" if ok else self._name(err),
                         self._version("cudaDriverGetVersion"), self._version("cudaRuntimeGetVersion"))

    def device_count(self) -> int:
        return self.probe().devices

    def device_properties(self, index: int = 0) -> tuple[str, int, int]:
        probe = self.probe()
        if probe.error or probe.devices < 1:
            raise BackendError(probe.explain())
        prop = self._check(self._rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return name.strip("\x00 "), int(prop.major), int(prop.minor)

    # ---- memory -----------------------------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(1, nbytes)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._check(self._rt.cudaFree(ptr), "cudaFree")

    def malloc_host(self, nbytes: int) -> tuple[int, np.ndarray]:
        """Pinned (page-locked) host memory and a uint8 numpy view of it."""
        ptr = int(self._check(self._rt.cudaMallocHost(max(1, nbytes)), "cudaMallocHost"))
        view = np.ctypeslib.as_array((ctypes.c_uint8 * max(1, nbytes)).from_address(ptr))
        return ptr, view

    def free_host(self, ptr: int) -> None:
        self._check(self._rt.cudaFreeHost(ptr), "cudaFreeHost")

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: str, stream: Any) -> None:
        k = (self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice if kind == H2D
             else self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        self._check(self._rt.cudaMemcpyAsync(dst, src, nbytes, k, stream), f"cudaMemcpyAsync {kind}")

    # ---- streams and events ----------------------------------------------------------------------------------
    def stream_create(self) -> Any:
        flags = self._rt.cudaStreamNonBlocking
        return self._check(self._rt.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")

    def stream_destroy(self, stream: Any) -> None:
        self._check(self._rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def stream_synchronize(self, stream: Any) -> None:
        self._check(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def event_create(self, blocking_sync: bool = False) -> Any:
        """A timing event; ``blocking_sync``: a host thread waiting on it sleeps instead of spinning."""
        if blocking_sync:
            flags = self._rt.cudaEventBlockingSync
            return self._check(self._rt.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")
        return self._check(self._rt.cudaEventCreate(), "cudaEventCreate")

    def event_record(self, event: Any, stream: Any) -> None:
        self._check(self._rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def event_synchronize(self, event: Any) -> None:
        self._check(self._rt.cudaEventSynchronize(event), "cudaEventSynchronize")

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._check(self._rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def event_destroy(self, event: Any) -> None:
        self._check(self._rt.cudaEventDestroy(event), "cudaEventDestroy")
