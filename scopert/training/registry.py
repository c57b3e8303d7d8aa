"""Model families registered by name, so that training, import and export find them the same way.

A family module (``scopert/training/models/<name>.py``) calls ``register(Family(...))`` at import time;
``get_family(name)`` imports the module on first use, so nothing heavy loads before it is needed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from scopert.errors import ConfigError

FAMILY_MODULES = {
    "rcan": "scopert.training.models.rcan",
    "unet": "scopert.training.models.unet",
    "blindspot": "scopert.training.models.blindspot",
    "tagan": "scopert.training.models.tagan",
    "cnnt": "scopert.training.models.cnnt",
}


@dataclass
class Family:
    """What the rest of ScopeRT needs to know about one model family.

    build_model(model_config) -> torch.nn.Module, in the exact layout of the original (state-dict keys match).
    card_fields(model_config) -> dict of ModelCard fields that the architecture fixes: ``input``/``output``
        (TensorSpec dicts), ``normalization``, ``postprocess``, ``tile_invariant``, ``default_tile``.
    export_shapes(model_config) -> at least two input shapes (with batch) on which export checks ONNX vs torch.
    export_module(model, model_config) -> the module to trace for ONNX (e.g. static ring kernels, final
        activation inside); defaults to the model itself.
    """

    name: str
    build_model: Callable[[dict], Any]
    card_fields: Callable[[dict], dict]
    export_shapes: Callable[[dict], list[tuple[int, ...]]]
    export_module: Callable[[Any, dict], Any] | None = None


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    _REGISTRY[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in _REGISTRY:
        module = FAMILY_MODULES.get(name)
        if module is None:
            raise ConfigError(f"unknown model family {name!r}; known families: {', '.join(FAMILY_MODULES)}.")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                raise ConfigError(f"model family {name!r} is not implemented in this version of ScopeRT.") from None
            raise
    return _REGISTRY[name]
