"""Inference backends behind one contract (``base.Backend``), one registry (``base.REGISTRY``) and the choice.

Each backend module imports its engine lazily, so this package imports with numpy alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from scopert.errors import BackendError
from scopert.runtime.backends.base import AUTO, REGISTRY, Backend, backend_choices

log = logging.getLogger(__name__)

BACKENDS = backend_choices()


def open_backend(path: str | Path, backend: str = AUTO, device: str = "auto", threads: int | None = None,
                 precision: str = "f32") -> Backend:
    """Open ``path`` with the named backend; ``auto`` picks the best one installed and says why in the log
    (``precision``: what the run asked for, so ``auto`` does not time f32 engines for a bf16 run)."""
    if backend != AUTO and backend not in REGISTRY:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(backend_choices())}.")
    if backend == AUTO:  # the choice module: its order, its reasons, built engines and the fallback to ORT
        from scopert.runtime.backends.choice import open_auto

        return open_auto(Path(path), device=device, threads=threads, precision=precision)
    return REGISTRY[backend].load_opener()(Path(path), device=device, threads=threads)
