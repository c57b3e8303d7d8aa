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
    if backend == "auto":
        backend = "trt" if path.suffix in (".engine", ".plan") else "ort"
        log.info("backend auto: %s for %s", backend, path.name)
    if backend == "ort":
        from scopert.runtime.backends.ort import OrtBackend

        return OrtBackend(path, device=device, threads=threads)
    raise BackendError(
        f"backend {backend!r} is not available in this version; use --backend ort (ONNX Runtime)."
    )
