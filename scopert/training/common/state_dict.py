"""Reading torch checkpoints without running pickled code, shared by every importer and by run folders.

``torch.load(weights_only=True)`` rebuilds only tensors, containers and plain values, plus the few harmless
types that a format is known to hold (``numpy_scalar_globals``, ``lightning_globals``), allowed for that one load
through the ``torch.serialization.safe_globals`` context (never process-wide ``add_safe_globals``). Anything else
(a class, a function, a ``__reduce__`` that opens a file) is refused with a message naming ``--trust-checkpoint``;
only ``trust=True`` hands the file to the full unpickler.
A DataParallel ``module.`` prefix is stripped and a ``model_state_dict``/``state_dict`` wrapper is unwrapped.
Must not import scopert.export or scopert.runtime.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from scopert.errors import CheckpointError

log = logging.getLogger(__name__)

TRUST_FLAG = "--trust-checkpoint"
TRUST_FIX = (f"Pass {TRUST_FLAG} only if you trust the file's source, or re-save the weights alone with "
             "torch.save(model.state_dict(), path).")
# torch.save stores zip members uncompressed; weights barely compress. More declared bytes than this many times the
# file size is a zip bomb, refused before torch inflates it into memory.
MAX_ZIP_EXPANSION = 8
# torch.load(weights_only=True) before 2.6 could still run code (CVE-2025-32434); safe_globals came in 2.5.
SAFE_TORCH = (2, 6)
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global|got <class '([^']+)'>|module (\S+) is blocked")


def numpy_scalar_globals() -> list[Any]:
    """numpy scalars (pytorch-3dunet's ``best_eval_score`` is an ``np.float64``; ScopeRT's resumable data state
    may hold numpy ints): the scalar constructor under its numpy 1 and numpy 2 module names, ``np.dtype`` and the
    numeric dtype classes. No object dtype; none of them runs code."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, *sorted(dtype_classes, key=lambda c: c.__name__)]


def lightning_globals() -> list[Any]:
    """A Lightning ``.ckpt``: ``argparse.Namespace`` (``hyper_parameters`` of scripts that pass their parsed
    arguments to ``save_hyperparameters``; SHINE itself saves none) and numpy scalars (callback states)."""
    return [argparse.Namespace, *numpy_scalar_globals()]


def looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive, or (legacy format, torch < 1.6) a pickle starting with protocol 2."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x80\x02"


def load_checkpoint(path: str | os.PathLike, what: str = "the checkpoint file", *, trust: bool = False,
                    allow: Sequence[Any] = (), untrusted_fix: str = TRUST_FIX) -> Any:
    """``torch.load`` on CPU that never runs pickled code unless ``trust`` is set.

    ``allow``: the harmless non-tensor types of this format (e.g. ``lightning_globals()``). ``what`` names the
    file the user should pass (for a missing file); ``untrusted_fix`` ends the message when the file holds other
    objects. Every failure is a CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass {what}.")
    if not looks_like_torch_file(path):
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (neither a zip archive nor a legacy pickle). "
            f"Check the file is complete and is {what}."
        )
    if zipfile.is_zipfile(path):
        _check_archive(path)
    if not trust and _torch_version() < SAFE_TORCH:
        raise CheckpointError(
            f"torch {torch.__version__} cannot load {path} safely (weights_only loading before torch 2.6 can run "
            f"code, CVE-2025-32434). Install torch>=2.6, or pass {TRUST_FLAG} if you trust the file's source."
        )
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise _untrusted(path, exc, untrusted_fix) from None
    except Exception as exc:  # noqa: BLE001 - truncated archive, damaged pickle, huge storage sizes, ...
        raise _unreadable(path, exc) from None
    log.warning("%s: loading with the full unpickler (%s); it runs any code the file holds", path, TRUST_FLAG)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a trusted file may still be damaged
        raise _unreadable(path, exc) from None


def _torch_version() -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _check_archive(path: Path) -> None:
    """The zip's central directory is readable and does not declare more bytes than ``MAX_ZIP_EXPANSION`` times
    the file size."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except Exception as exc:  # noqa: BLE001 - BadZipFile, struct and value errors of a damaged directory
        raise _unreadable(path, exc) from None
    size = path.stat().st_size
    if declared > MAX_ZIP_EXPANSION * size + (1 << 20):
        raise CheckpointError(
            f"{path} declares {declared} bytes of members in a {size}-byte file (torch.save does not compress); it "
            "is damaged or a zip bomb, so it is not unpacked. Get the checkpoint again from its source."
        )


def _untrusted(path: Path, exc: Exception, fix: str) -> CheckpointError:
    """Names the type the safe loader refused (``io.open``); without one, the unpickler's own short reason."""
    text = str(exc)
    match = _UNSAFE_GLOBAL.search(text)
    if match:
        name = next(g for g in match.groups() if g)
        return CheckpointError(f"{path} holds Python objects besides tensors ({name}), and unpickling them could "
                               f"run code. {fix}")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = next((ln.split("error:", 1)[-1].strip() for ln in lines if "WeightsUnpickler error" in ln), "")
    detail = (detail or (lines[-1] if lines else type(exc).__name__))[:200]
    return CheckpointError(f"{path} cannot be read without running pickled code ({detail}): it is damaged, or "
                           f"holds objects only the full unpickler rebuilds. {fix}")


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    detail = " ".join(str(exc).split())[:200] or type(exc).__name__
    return CheckpointError(f"{path} is not a readable torch checkpoint ({detail}). Check the file is complete.")


def load_state_dict(path: str | os.PathLike, what: str = "the checkpoint file", *,
                    trust: bool = False) -> dict[str, torch.Tensor]:
    """Load a raw state dict (zip or legacy torch format); see ``load_checkpoint`` for ``trust``.

    ``what`` names the file the user should pass, for the message when it does not exist.
    """
    path = Path(path)
    state = load_checkpoint(path, what, trust=trust)
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("model_state_dict", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} does not hold a state dict (got {type(state).__name__}). Pass {what}.")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        bad = next(k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
        raise CheckpointError(f"{path}: the state dict entry {bad!r} is a {type(state[bad]).__name__}, not a "
                              f"tensor; the file is damaged or not {what}.")
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
    check_values(state, own, where, fix)


def check_values(state: dict[str, Any], own: dict[str, torch.Tensor], where: str, fix: str) -> None:
    """Each tensor the model takes is a tensor of its kind (floating for weights, integer for counters) and
    finite: ``load_state_dict`` would silently cast complex or integer values, and NaN weights give NaN images."""
    for key, ref in own.items():
        if key not in state:
            continue
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: {key!r} is a {type(value).__name__}, not a tensor. {fix}")
        if ref.is_floating_point() != value.is_floating_point() or value.is_complex():
            raise CheckpointError(f"{where}: {key!r} holds {value.dtype} values where the model keeps {ref.dtype}; "
                                  f"the file is damaged or not a checkpoint of this network. {fix}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{where}: {key!r} holds NaN or Inf values; the checkpoint is unusable. Pick one "
                                  "from before training diverged.")

