"""A test-only engine that returns its input: what adding an engine takes is this module plus one registry entry
(issue 22). ``load``, ``auto``, ``doctor`` and the precision choice find it through the registry alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scopert.runtime.backends.base import Backend, BackendEntry, BackendInfo


class EchoBackend(Backend):
    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        self.info = BackendInfo(name="echo", device="cpu", reason="echo: returns its input")
        self.input_name, self.output_name, self.metadata = "input", "output", {}

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.array(batch, np.float32)


ENTRY = BackendEntry("echo", "tests.runtime.echo_engine:EchoBackend", (".onnx",), "returns its input (tests only)",
                     title="Echo", probe="numpy", priority={"cpu": 5})
