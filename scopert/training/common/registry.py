"""Model families registered by name, so that training, import and export find them the same way.

``FAMILIES`` declares each family once, without importing torch: its folder, trainer, importer and seed
publication (the CLI's ``train``/``import`` and the bioimage.io citation read it). The family's network module
(``scopert/training/<name>/model.py``) calls ``register(Family(...))`` at import time; ``get_family(name)``
imports it on first use, so nothing heavy loads before it is needed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from scopert.errors import ConfigError

@dataclass(frozen=True)
class Seed:
    """The publication a family re-implements: cited by default in every bioimage.io package of that family."""

    text: str
    doi: str | None = None
    url: str | None = None
    task: str = "restoration"


@dataclass(frozen=True)
class FamilyEntry:
    """What the CLI, the importers and the bioimage.io export need of a family, declared once and light (no
    torch): its folder ``scopert/training/<name>/``, its trainer and importer there, its seed publication.

    ``importer`` is called as ``importer(path, out_dir, *, config, model_name, frames, net_s, opt_txt, trust)``
    and takes what its checkpoint format needs; ``needs_config``: the weights alone cannot tell the whole
    architecture, so ``scopert import`` asks for ``--config``."""

    name: str
    seed: Seed
    trainer: str  # "module:callable" in the family's folder: (config_path, out_dir, resume) -> RunInfo
    importer: str = "importer:import_checkpoint"
    needs_config: bool = False

    @property
    def package(self) -> str:
        return f"scopert.training.{self.name}"

    def load(self, what: str) -> Callable[..., Any]:
        """The family's ``trainer`` or ``importer`` callable, imported on demand."""
        module, _, attr = getattr(self, what).partition(":")
        return getattr(importlib.import_module(f"{self.package}.{module}"), attr)


FAMILIES: dict[str, FamilyEntry] = {e.name: e for e in (
    FamilyEntry("rcan", trainer="train:train_rcan", seed=Seed("Chen J, Sasaki H, Lai H, et al. Three-dimensional residual channel attention networks "
                             "denoise and sharpen fluorescence microscopy image volumes. Nature Methods 18, 678-687 "
                             "(2021).", doi="10.1038/s41592-021-01155-x", task="denoising")),
    FamilyEntry("unet", trainer="train:train_unet", seed=Seed("Wolny A, Cerrone L, Vijayan A, et al. Accurate and versatile 3D segmentation of plant "
                             "tissues at cellular resolution. eLife 9:e57613 (2020).", doi="10.7554/eLife.57613",
                             task="segmentation"), needs_config=True),
    FamilyEntry("blindspot", trainer="train:train_blindspot", seed=Seed("Kim, Rhee et al. Self-supervised machine-learning framework for high-throughput "
                                  "electron microscopy (SHINE).", url="https://github.com/sungsu-kang/SHINE",
                                  task="denoising")),
    FamilyEntry("tagan", trainer="train:train_tagan", seed=Seed("Bouchard C, Wiesner T, Deschenes A, et al. Resolution enhancement with a task-assisted "
                              "GAN to guide optical nanoscopy image analysis and acquisition. Nature Machine "
                              "Intelligence 5, 830-844 (2023).", doi="10.1038/s42256-023-00689-3",
                              task="super-resolution")),
    FamilyEntry("cnnt", trainer="train:train_cnnt", seed=Seed("Rehman A, Zhovmer A, Sato R, et al. Convolutional neural network transformer (CNNT) for "
                             "fluorescence microscopy image denoising with improved generalization and fast adaptation. "
                             "arXiv:2404.04726 (2024).", url="https://arxiv.org/abs/2404.04726", task="denoising"),
                needs_config=True),
)}
FAMILY_MODULES = {name: f"{entry.package}.model" for name, entry in FAMILIES.items()}


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
