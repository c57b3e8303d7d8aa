"""A fake of ``scopert.runtime.backends.cuda_adapter.CudaRuntime``: host memory stands in for the GPU.

Work on a stream is queued and runs when an event on that stream is synchronized, so tests can see which
operations were in flight together. Every call is recorded as (name, stream, ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class FakeCuda:
    def __init__(self, name: str = "NVIDIA H100 80GB HBM3", cc: tuple[int, int] = (9, 0), devices: int = 1) -> None:
        self.name, self.cc, self.devices = name, cc, devices
        self.mem: dict[int, np.ndarray] = {}
        self.pinned: set[int] = set()
        self.calls: list[tuple] = []
        self.queues: dict[int, list] = {}
        self.max_inflight_streams = 0
        self._next = 0x1000

    def _alloc(self, nbytes: int) -> int:
        ptr = self._next
        self._next += max(nbytes, 1) + 256
        self.mem[ptr] = np.zeros(max(nbytes, 1), np.uint8)
        return ptr

    def device_count(self) -> int:
        return self.devices

    def device_properties(self, index: int = 0) -> tuple[str, int, int]:
        self.calls.append(("device_properties", index))
        return self.name, self.cc[0], self.cc[1]

    def malloc(self, nbytes: int) -> int:
        self.calls.append(("malloc", nbytes))
        return self._alloc(nbytes)

    def free(self, ptr: int) -> None:
        self.calls.append(("free", ptr))
        del self.mem[ptr]

    def malloc_host(self, nbytes: int) -> tuple[int, np.ndarray]:
        self.calls.append(("malloc_host", nbytes))
        ptr = self._alloc(nbytes)
        self.pinned.add(ptr)
        return ptr, self.mem[ptr]

    def free_host(self, ptr: int) -> None:
        self.calls.append(("free_host", ptr))
        self.pinned.discard(ptr)
        del self.mem[ptr]

    def stream_create(self) -> int:
        s = len(self.queues) + 1
        self.queues[s] = []
        self.calls.append(("stream_create", s))
        return s

    def stream_destroy(self, stream: int) -> None:
        self.calls.append(("stream_destroy", stream))

    def stream_handle(self, stream: int) -> int:
        return stream

    def event_create(self) -> dict:
        return {"stream": None}

    def event_destroy(self, event: Any) -> None:
        pass

    def event_record(self, event: dict, stream: int) -> None:
        event["stream"] = stream
        self.calls.append(("event_record", stream))

    def _enqueue(self, stream: int, op: tuple) -> None:
        self.queues[stream].append(op)
        busy = sum(1 for q in self.queues.values() if q)
        self.max_inflight_streams = max(self.max_inflight_streams, busy)

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: str, stream: int) -> None:
        if kind == "h2d" and src not in self.pinned or kind == "d2h" and dst not in self.pinned:
            raise AssertionError("async copies must use pinned host memory")
        self.calls.append(("memcpy_" + kind, stream, nbytes))
        self._enqueue(stream, ("copy", dst, src, nbytes))

    def kernel(self, stream: int, src: int, dst: int, n: int) -> None:
        self.calls.append(("kernel", stream, n))
        self._enqueue(stream, ("kernel", src, dst, n))

    def event_synchronize(self, event: dict) -> None:
        stream = event["stream"]
        self.calls.append(("event_synchronize", stream))
        for op in self.queues[stream]:
            if op[0] == "copy":
                _, dst, src, nbytes = op
                self.mem[dst][:nbytes] = self.mem[src][:nbytes]
            else:
                _, src, dst, n = op
                x = self.mem[src][: 4 * n].view(np.float32)
                self.mem[dst][: 4 * n] = (2 * x + 1).astype(np.float32).view(np.uint8)
        self.queues[stream] = []
