"""Inference engines behind one contract (``base.Backend``) and one registry (``base.REGISTRY``).

Each engine module imports its engine lazily, so this package imports with numpy alone. Which engine runs a
model, and at which precision, is the selection layer's (``scopert.runtime.selection``); engines never import it
nor each other.
"""

from __future__ import annotations

from scopert.runtime.backends.base import AUTO, REGISTRY, Backend, backend_choices  # noqa: F401 - the contract

BACKENDS = backend_choices()
