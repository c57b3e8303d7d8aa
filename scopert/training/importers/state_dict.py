"""Reading a raw torch state dict safely, shared by the importers of state-dict checkpoints.

``torch.load(weights_only=True)`` never runs pickled code; a DataParallel ``module.`` prefix is stripped and a
``model_state_dict``/``state_dict`` wrapper is unwrapped. Must not import scopert.export or scopert.runtime.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from scopert.errors import CheckpointError


def looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive, or (legacy format, torch < 1.6) a pickle starting with protocol 2."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x80\x02"


def load_state_dict(path: str | os.PathLike, what: str = "the checkpoint file") -> dict[str, torch.Tensor]:
    """Load a raw state dict (zip or legacy torch format) without running pickled code.

    ``what`` names the file the user should pass, for the message when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass {what}.")
    if not looks_like_torch_file(path):
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (neither a zip archive nor a legacy pickle). "
            "Check the file is complete and is the .pth/.pt the seed saved."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "not only tensors")
        raise CheckpointError(
            f"{path} holds Python objects besides tensors ({detail}); ScopeRT loads only plain state dicts "
            "without running pickled code. Re-save it with torch.save(model.state_dict(), path)."
        ) from None
    except Exception as exc:  # truncated archive, damaged pickle, ...
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({exc}). Check the file is complete."
        ) from None
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("model_state_dict", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} does not hold a state dict (got {type(state).__name__}).")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def check_fits(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], where: str, built_from: str,
               fix: str) -> None:
    """Every checkpoint key belongs to the model built from ``built_from``, and every tensor it needs is
    there with its shape; the error names the first misfit and ends with ``fix``."""
    for key in state:
        if key not in own:
            raise CheckpointError(f"{where}: the checkpoint key {key!r} does not fit the model built from "
                                  f"{built_from}. {fix}")
    for key, ref in own.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):
                continue  # older torch did not save it; BatchNorm fills it on load
            raise CheckpointError(f"{where}: the tensor {key!r} that {built_from} needs is missing from the "
                                  f"checkpoint. {fix}")
        if tuple(state[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{where}: {built_from} disagrees with the weights at {key!r}: the checkpoint has shape "
                f"{tuple(state[key].shape)}, the model built from it {tuple(ref.shape)}. {fix}"
            )

