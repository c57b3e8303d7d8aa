"""``cuda_adapter.CudaRuntime`` run unchanged against a fake of cuda-python's ``cuda.bindings.runtime`` module.

Every public method of the adapter is exercised here (``ADAPTER_API``); the fake returns ``(cudaError_t, value)``
tuples, uses the real enum and flag names, and runs stream work only when an event or stream is waited on.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from scopert.errors import BackendError
from scopert.runtime.backends.cuda_adapter import D2H, H2D, CudaRuntime
from tests.fakes.fake_cudart import FakeCudaRuntimeModule, cudaError_t

ADAPTER_API = ("load", "probe", "device_count", "device_properties", "malloc", "free", "malloc_host", "free_host",
               "memcpy_async", "stream_create", "stream_destroy", "stream_synchronize", "stream_handle",
               "event_create", "event_record", "event_synchronize", "event_elapsed_ms", "event_destroy")


def test_every_public_adapter_function_is_listed_here():
    public = {n for n, _ in inspect.getmembers(CudaRuntime) if not n.startswith("_") and callable(getattr(CudaRuntime, n))}
    assert public == set(ADAPTER_API)


def test_device_memory_copies_streams_and_events_round_trip():
    rt = FakeCudaRuntimeModule(name="NVIDIA L4", cc=(8, 9))
    cuda = CudaRuntime.load(rt)
    assert cuda.device_count() == 1 and cuda.device_properties(0) == ("NVIDIA L4", 8, 9)
    data = np.arange(4096, dtype=np.float32) * 0.5
    n = data.nbytes
    streams = [cuda.stream_create(), cuda.stream_create()]
    assert all(rt.streams[cuda.stream_handle(s)].flags == rt.cudaStreamNonBlocking for s in streams)
    slots = []
    for k, stream in enumerate(streams):  # one round trip per stream, both queued before any wait
        host_in, host_out = cuda.malloc_host(n), cuda.malloc_host(n)
        dev = cuda.malloc(n)
        host_in[1][:] = (data + k).view(np.uint8)
        start, done = cuda.event_create(), cuda.event_create(blocking_sync=True)
        cuda.event_record(start, stream)
        cuda.memcpy_async(dev, host_in[0], n, H2D, stream)
        cuda.memcpy_async(host_out[0], dev, n, D2H, stream)
        cuda.event_record(done, stream)
        slots.append((stream, host_in, host_out, dev, start, done))
    assert rt.max_busy_streams == 2 and rt.pageable_copies == 0
    assert not slots[0][2][1].any()  # nothing ran yet: the host buffer is stale until the event is waited on
    for k, (stream, host_in, host_out, dev, start, done) in enumerate(slots):
        cuda.event_synchronize(done)
        assert np.array_equal(host_out[1].view(np.float32), data + k)
        ms = cuda.event_elapsed_ms(start, done)
        assert ms == pytest.approx(2 * n / 25e9 * 1e3)  # two copies at the fake's 25 GB/s
    cuda.stream_synchronize(streams[0])
    assert rt.spin_waits == 0  # every wait was on a blocking-sync event
    for stream, host_in, host_out, dev, start, done in slots:
        cuda.free_host(host_in[0]), cuda.free_host(host_out[0]), cuda.free(dev)
        cuda.event_destroy(start), cuda.event_destroy(done), cuda.stream_destroy(stream)
    assert not rt.pinned and not rt.device_mem and not rt.events and not rt.streams


def test_an_event_completes_only_the_work_queued_before_it():
    rt = FakeCudaRuntimeModule()
    cuda = CudaRuntime(rt)
    stream = cuda.stream_create()
    host_in, host_out = cuda.malloc_host(16), cuda.malloc_host(16)
    dev = cuda.malloc(16)
    host_in[1][:] = 7
    early = cuda.event_create(blocking_sync=True)
    cuda.memcpy_async(dev, host_in[0], 16, H2D, stream)
    cuda.event_record(early, stream)  # recorded before the copy back
    cuda.memcpy_async(host_out[0], dev, 16, D2H, stream)
    cuda.event_synchronize(early)
    assert not host_out[1].any()  # the D2H copy was queued after the event: not done
    late = cuda.event_create()
    cuda.event_record(late, stream)
    cuda.event_synchronize(late)
    assert (host_out[1] == 7).all() and rt.spin_waits == 1  # the plain event spun
    with pytest.raises(BackendError, match="cudaEventElapsedTime failed.*cudaErrorNotReady"):
        cuda.event_elapsed_ms(early, cuda.event_create())  # never recorded


def test_failures_name_the_call_and_the_cuda_error():
    rt = FakeCudaRuntimeModule()
    cuda = CudaRuntime(rt)
    with pytest.raises(BackendError, match=r"CUDA cudaFree failed \(cudaErrorInvalidValue\)"):
        cuda.free(0xDEAD)
    with pytest.raises(BackendError, match=r"cudaMalloc failed \(cudaErrorMemoryAllocation\)"):
        cuda.malloc(2 << 30)
    stream = cuda.stream_create()
    host = cuda.malloc_host(8)
    with pytest.raises(BackendError, match=r"cudaMemcpyAsync h2d failed \(cudaErrorInvalidValue\)"):
        cuda.memcpy_async(host[0], host[0], 8, H2D, stream)  # destination is not device memory
    timing_off = rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming)[1]
    start = cuda.event_create()
    cuda.event_record(start, stream), cuda.event_record(timing_off, stream)
    cuda.event_synchronize(timing_off)
    with pytest.raises(BackendError, match="cudaErrorInvalidResourceHandle"):
        cuda.event_elapsed_ms(start, timing_off)


def test_cuda13_bindings_on_a_cuda12_driver_are_named_a_mismatch():
    rt = FakeCudaRuntimeModule(driver_version=12040, runtime_version=13000)
    assert rt.cudaGetDeviceCount() == (cudaError_t.cudaErrorInsufficientDriver, None)
    probe = CudaRuntime(rt).probe()
    assert probe.driver_too_old and probe.error == "cudaErrorInsufficientDriver"
    with pytest.raises(BackendError, match=r"driver/runtime mismatch.*CUDA 12\.4.*CUDA 13\.0.*gpu-cu12.*R580"):
        CudaRuntime.load(rt)
    with pytest.raises(BackendError, match="driver/runtime mismatch"):
        CudaRuntime(rt).device_properties(0)
    with pytest.raises(BackendError, match="no NVIDIA GPU is visible"):
        CudaRuntime.load(FakeCudaRuntimeModule(devices=0))
    assert CudaRuntime(FakeCudaRuntimeModule(devices=0)).device_count() == 0
