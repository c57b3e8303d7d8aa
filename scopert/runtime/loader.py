"""``load()``: a model file to a ready ``Model``, in one pass down the runtime's layers.

The card is read once (its sidecar, else the ONNX metadata, through ``onnx_file``), the ``Planner`` is made
from it, the selection layer opens one backend with its precision decided (``selection.select``), and the
``Model`` is built from the three. Nothing is opened twice and nothing is swapped afterwards.
Imports numpy and the runtime's core, planning, selection and leaves; never torch or onnx.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from scopert.card import ModelCard, Normalization, TensorSpec, card_from_metadata, read_sidecar, sidecar_path
from scopert.errors import CardError, ConfigError, InputError
from scopert.runtime.backends.base import model_suffixes
from scopert.runtime.model import Model
from scopert.runtime.onnx_file import check_external_data, onnx_io_names, onnx_metadata
from scopert.runtime.planning import Planner
from scopert.runtime.selection import select

log = logging.getLogger(__name__)


def load(path: str | Path, backend: str = "auto", device: str = "auto", *, axes: str | None = None,
         halo: dict[str, int] | None = None, divisor: dict[str, int] | None = None,
         scale: dict[str, float] | None = None, threads: int | None = None, precision: str = "f32",
         calibration: np.ndarray | Callable[[], np.ndarray] | None = None, gate_db: float = 45.0) -> "Model":
    """Open a model: an ONNX file with an embedded card, an ONNX file without one (then pass ``axes``,
    e.g. 'bczyx', and optionally halo/divisor/scale), or an engine with its sidecar card.

    ``precision='bf16'`` (OpenVINO, x86) is used only when the CPU reports bf16 and PSNR(bf16 vs f32) on
    real tiles of ``calibration`` (an array, or a function that reads one only when a gate must be measured; or
    a value recorded beside the model) is at least ``gate_db``;
    otherwise the run goes on in f32 and the log says why."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"model file {path} does not exist.")
    if path.suffix.lower() in (".zip", ".yaml", ".yml") or (path.is_dir() and any(
            (path / n).is_file() for n in ("rdf.yaml", "bioimageio.yaml"))):
        raise InputError(f"{path} is a bioimage.io package; import it first: `scopert import bioimageio {path} -o "
                         "engines/NAME.onnx`, then run the .onnx it writes.")
    if path.suffix not in model_suffixes():
        raise InputError(f"{path} is not a model file ScopeRT can run; pass an .onnx file (or a TensorRT .engine).")
    if path.suffix == ".onnx":
        with open(path, "rb") as fh:
            head = fh.read(16)
        if not head or head.lstrip()[:1] in (b"{", b"<") or head.startswith(b"II*") or head.startswith(b"MM\x00"):
            raise InputError(f"{path} is not an ONNX model (it looks like another file type). "
                             "Pass an ONNX file written by `scopert export`.")
        check_external_data(path)  # weights stored beside the model must stay in its folder
    card = read_card(path)  # once: the sidecar, else the ONNX metadata
    if card is None and path.suffix != ".onnx":
        raise CardError(f"{path} has no card beside it ({sidecar_path(path).name}, which `scopert build` writes); "
                        "rebuild the engine with `scopert build` so its card is written.")
    if card is None:  # an ONNX file without a card: the arguments describe it, the graph names its tensors
        names = onnx_io_names(path)
        card = _card_from_arguments(path, names, axes, halo, divisor, scale)
    elif axes is not None and axes != card.input.axes:
        raise ConfigError(f"axes={axes!r} disagrees with the model's card ({card.input.axes!r}); drop the option.")
    planner = Planner(card, path)
    chosen = select(path, card, planner, backend, device, threads, precision, calibration, gate_db)
    model = Model(chosen.backend, card, path, chosen.precision)
    # the backend and precision decisions were logged once each where they were made
    log.debug("loaded %s (%s) on %s: %s", path.name, card.family, model.backend.info.name, model.backend.info.reason)
    return model


def read_card(path: Path) -> ModelCard | None:
    """The model's card: its sidecar (an engine's, or one written beside an ONNX), else the ONNX's metadata."""
    card = read_sidecar(path)
    if card is None and path.suffix == ".onnx":
        try:
            metadata = onnx_metadata(path)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path} is not a readable ONNX model ({exc}). Re-export it, or copy it again if it "
                             "was cut short.") from None
        card = card_from_metadata(metadata, where=f"{path.name}:metadata")
    return card


def _card_from_arguments(path, names: tuple[str, str], axes, halo, divisor, scale) -> ModelCard:
    if axes is None:
        raise CardError(
            f"{path.name} has no ScopeRT card, so its axes are unknown. Pass them: --axes bczyx (3D), bcyx (2D) "
            "or btcyx (2D+t), or re-export the model with `scopert export`."
        )
    spatial = "".join(a for a in axes if a in "tzyx")
    card = ModelCard(
        family="unknown", name=path.stem,
        input=TensorSpec(names[0], axes, divisor=dict(divisor or {}), scale={}),
        output=TensorSpec(names[1], axes, scale=dict(scale or {})),
        halo={a: int((halo or {}).get(a, 0)) for a in spatial},
        tile_invariant=False, normalization=Normalization(kind="percentile", pmin=1.0, pmax=99.8),
        notes="card inferred from arguments (the ONNX file had none)",
    )
    card.validate(where="arguments")
    log.info("no card in %s: using axes=%s halo=%s divisor=%s scale=%s, percentile normalization 1/99.8, "
             "blend stitching", path.name, axes, card.halo, card.input.divisor, card.output.scale)
    return card
