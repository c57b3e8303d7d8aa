"""The run folder: what training and importers write and what ``scopert export`` reads.

Layout::

    runs/NAME/
      run.json               {"family": ..., "model": {...architecture...}, "train": {...}, "source": {...}}
      checkpoints/best.pt    {"model_state_dict": ..., "epoch": ..., "val_loss": ...}
      checkpoints/last.pt    the same plus optimizer/scheduler state, for resuming
      metrics.csv, loss.png  written by the trainer
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scopert.errors import CheckpointError, ConfigError, OutputError

RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"


@dataclass
class RunInfo:
    folder: Path
    family: str
    model_config: dict[str, Any]
    train_config: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def best_checkpoint(self) -> Path:
        return self.folder / CHECKPOINT_DIR / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.folder / CHECKPOINT_DIR / "last.pt"


def write_run_info(info: RunInfo) -> None:
    info.folder.mkdir(parents=True, exist_ok=True)
    (info.folder / CHECKPOINT_DIR).mkdir(exist_ok=True)
    data = {"family": info.family, "model": info.model_config, "train": info.train_config, "source": info.source}
    atomic_write_bytes(info.folder / RUN_FILE, json.dumps(data, indent=2).encode())


def read_run_info(folder: str | os.PathLike) -> RunInfo:
    folder = Path(folder)
    path = folder / RUN_FILE
    if not path.exists():
        raise ConfigError(
            f"{folder} is not a ScopeRT run folder (no {RUN_FILE}). Pass a folder made by "
            "`scopert train` or `scopert import`."
        )
    data = json.loads(path.read_text())
    for key in ("family", "model"):
        if key not in data:
            raise ConfigError(f"{path}: the key {key!r} is missing; the run folder is damaged.")
    return RunInfo(folder, data["family"], data["model"], data.get("train", {}), data.get("source", {}))


def previous_run(folder: Path, resume: bool, family: str) -> RunInfo | None:
    """The run already in ``folder`` (to resume), None for a fresh folder; refuses to overwrite a run or to
    continue another family's run."""
    if not (folder / RUN_FILE).exists():
        return None
    info = read_run_info(folder)
    if not resume and info.last_checkpoint.exists():
        raise OutputError(f"{folder} already holds a training run. Resume it, or choose a new output folder "
                          "(or delete this one) to start over.")
    if info.family != family:
        raise ConfigError(f"{folder} holds a {info.family!r} run, not a {family} run; choose another output folder.")
    return info


def continue_run(previous: RunInfo | None, model_config: dict[str, Any], seed: int | None, folder: Path,
                 what: str = "model config") -> int:
    """The seed of this run, and a check that a resumed run keeps its architecture.

    The seed is the config's, else the resumed run's, else a fresh random one (recorded in run.json, so the run
    can be repeated). A resumed run whose ``model_config`` differs is refused: its checkpoints would not load.
    """
    if previous is not None and previous.model_config != model_config:
        raise ConfigError(f"{folder} holds a {previous.family} run with {what} {previous.model_config}, but this "
                          f"config gives {model_config}. Use a new output folder, or the original config to resume.")
    if seed is None and previous is not None:
        seed = previous.train_config.get("seed")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    return int(seed)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save in memory, then ``atomic_write_bytes``: an interrupted save never leaves half a checkpoint,
    and a full disk is an OSError with its errno (torch's own file writer reports it as a bare RuntimeError)."""
    import io

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


RUN_CHECKPOINT_FIX = ("ScopeRT writes only tensors and plain values into run folders, so this file was not written by "
                      "ScopeRT or was altered; re-import the original with `scopert import`, or train again.")


def load_run_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint of a run folder (best.pt, last.pt), read without running pickled code.

    Run folders are shared like any download, so they get the importers' safe reader: tensors, plain values and
    numpy scalars only. Raises CheckpointError for anything else or an unreadable file.
    """
    from scopert.training.common.state_dict import load_checkpoint, numpy_scalar_globals

    state = load_checkpoint(path, "a checkpoint written by `scopert train` or `scopert import`",
                            allow=numpy_scalar_globals(), untrusted_fix=RUN_CHECKPOINT_FIX)
    if not isinstance(state, dict) or not isinstance(state.get("model_state_dict"), dict):
        raise CheckpointError(f"{path} holds no 'model_state_dict'; it is not a ScopeRT run checkpoint. "
                              f"{RUN_CHECKPOINT_FIX}")
    return state


def load_model(folder: str | os.PathLike, which: str = "best") -> tuple[RunInfo, Any]:
    """Rebuild the model of a run folder and load its ``best`` (or ``last``) weights, in eval mode."""
    from scopert.training.common.registry import get_family

    info = read_run_info(folder)
    ckpt = info.best_checkpoint if which == "best" else info.last_checkpoint
    if not ckpt.exists():
        raise CheckpointError(
            f"{info.folder} has no checkpoint ({ckpt.relative_to(info.folder)} is missing). "
            "Train longer than one epoch, or import a checkpoint with `scopert import`."
        )
    model = get_family(info.family).build_model(info.model_config)
    state = load_run_checkpoint(ckpt)
    try:
        model.load_state_dict(state["model_state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt} does not fit the {info.family} model that run.json describes "
                              f"({' '.join(str(exc).split())[:300]}). {RUN_CHECKPOINT_FIX}") from None
    model.eval()
    return info, model


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``<name>.tmp`` and rename it onto ``path``; on any failure (a full disk, Ctrl-C) delete the temporary."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a failed write() names no file; the CLI's message should
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
