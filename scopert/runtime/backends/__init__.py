"""Inference backends behind one small protocol (``base.Backend``) and the choice between them.

Each backend module imports its engine lazily, so this package imports with numpy alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from scopert.errors import BackendError
from scopert.runtime.backends.base import Backend

log = logging.getLogger(__name__)

BACKENDS = ("auto", "ort", "openvino", "trt")


def open_backend(path: str | Path, backend: str = "auto", device: str = "auto", threads: int | None = None) -> Backend:
    """Open ``path`` with the named backend; ``auto`` picks the best one installed and says why in the log."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    path = Path(path)
    # auto and openvino go through the choice module: its order, its reasons, and the fallback to ORT.
    if backend == "auto" and path.suffix not in (".engine", ".plan"):
        from scopert.runtime.backends.choice import open_auto

        return open_auto(path, device=device, threads=threads)
    if backend == "auto":
        backend = "trt"
        log.info("backend auto: %s for %s", backend, path.name)
    if backend == "openvino":
        from scopert.runtime.backends.choice import open_openvino

        return open_openvino(path, threads, "f32", "--backend openvino")
    if backend == "ort":
        from scopert.runtime.backends.ort import OrtBackend

        return OrtBackend(path, device=device, threads=threads)
    from scopert.runtime.backends.trt import TrtBackend

    return TrtBackend(path, device=device, threads=threads)
