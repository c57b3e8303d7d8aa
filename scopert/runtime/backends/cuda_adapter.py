"""A thin adapter over cuda-python's runtime API (``cuda.bindings.runtime``): the few calls the TRT backend needs.

Every call checks the returned error code and raises ``BackendError`` naming the call, so a CUDA failure is
never a bare tuple. Pinned host memory is exposed as a numpy view. ``cuda.bindings`` is imported only in
``CudaRuntime.load``; tests pass a fake with the same methods. Imports numpy and the standard library.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from scopert.errors import BackendError

H2D, D2H = "h2d", "d2h"


class CudaRuntime:
    """Device/pinned memory, streams, events and async copies on one GPU."""

    def __init__(self, cudart: Any) -> None:
        self._rt = cudart

    @classmethod
    def load(cls) -> "CudaRuntime":
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            raise BackendError(
                "cuda-python is not installed (`cuda.bindings` cannot be imported); the TensorRT backend needs it. "
                "Install it with `pip install 'cuda-python<13'` (CUDA 12 drivers) or use --backend ort."
            ) from None
        rt = cls(cudart)
        count = rt.device_count()
        if count < 1:
            raise BackendError("no NVIDIA GPU is visible to CUDA; use --backend ort (ONNX Runtime) on this machine.")
        return rt

    # ---- helpers ------------------------------------------------------------------------------------------
    def _check(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = getattr(err, "name", str(err))
            raise BackendError(
                f"CUDA {what} failed ({name}). Check the NVIDIA driver (cuda-python's major version must match it) "
                "or use --backend ort."
            )
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else tuple(rest)

    def device_count(self) -> int:
        err, count = self._rt.cudaGetDeviceCount()
        return int(count) if int(err) == 0 else 0

    def device_properties(self, index: int = 0) -> tuple[str, int, int]:
        if self.device_count() < 1:
            raise BackendError("no NVIDIA GPU is visible to CUDA (cudaGetDeviceCount); ONNX Runtime runs instead.")
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

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def event_create(self) -> Any:
        return self._check(self._rt.cudaEventCreate(), "cudaEventCreate")

    def event_record(self, event: Any, stream: Any) -> None:
        self._check(self._rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def event_synchronize(self, event: Any) -> None:
        self._check(self._rt.cudaEventSynchronize(event), "cudaEventSynchronize")

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._check(self._rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def event_destroy(self, event: Any) -> None:
        self._check(self._rt.cudaEventDestroy(event), "cudaEventDestroy")
