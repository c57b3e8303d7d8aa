"""Read a pytorch-3dunet training YAML (the seed's shape) into a checked ``UNetTrainConfig``.

Sections: ``model:``, ``loss:``, ``eval_metric:``, ``optimizer:``, ``lr_scheduler:``, ``trainer:``, ``loaders:``
(``train:``/``val:`` with ``file_paths``, ``slice_builder``, ``transformer``), plus ``manual_seed`` and ``device``.
An existing seed config works with only its paths changed: keys that only matter to the seed's machinery
(``checkpoint_dir``, ``log_after_iters``, ``num_workers``, ``h5_dir``, ...) are accepted and ignored; any key neither
used nor known is refused by its dotted name. ``trainer.time_limit_minutes`` is ScopeRT's own key.

Imports yaml and the standard library only; must not import torch, ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scopert.training.common.config_file import read_config_file
from scopert.errors import ConfigError

log = logging.getLogger(__name__)

TOP_KEYS = ("model", "loss", "eval_metric", "optimizer", "lr_scheduler", "trainer", "loaders", "manual_seed",
            "device", "predictor", "model_path")
REQUIRED_TOP = ("model", "loss", "trainer", "loaders")
# trainer keys: used ones, then the seed's bookkeeping keys accepted and ignored here.
TRAINER_USED = ("validate_after_iters", "epochs", "max_num_epochs", "iters", "max_num_iterations",
                "eval_score_higher_is_better", "time_limit_minutes", "batch_size")
TRAINER_IGNORED = ("checkpoint_dir", "resume", "pre_trained", "log_after_iters", "skip_train_validation",
                   "tensorboard_formatter", "h5_dir", "checkpoint_after_iters", "save_checkpoint_after_iters",
                   "builder", "name", "validate_iters", "max_val_images", "sample_plots")
LOADER_USED = ("batch_size", "raw_internal_path", "label_internal_path", "weight_internal_path", "train", "val")
LOADER_IGNORED = ("dataset", "num_workers", "mirror_padding", "pad_width", "test", "output_dir",
                  "skip_shape_check")
PHASE_KEYS = ("file_paths", "slice_builder", "transformer", "raw_internal_path", "label_internal_path",
              "weight_internal_path")
SLICE_KEYS = ("name", "patch_shape", "stride_shape", "threshold", "slack_acceptance", "num_patches",
              "skip_shape_check", "label_internal_path", "weight_internal_path")
OPTIMIZER_KEYS = ("name", "learning_rate", "weight_decay", "betas", "momentum")
SCHEDULER_KEYS = ("name", "mode", "factor", "patience", "threshold", "min_lr", "step_size", "gamma",
                  "milestones", "verbose")
SCHEDULERS = ("ReduceLROnPlateau", "StepLR", "MultiStepLR", "none")


@dataclass
class PhaseConfig:
    """One of ``loaders.train`` / ``loaders.val``."""

    file_paths: list[Path]
    slice_builder: dict[str, Any]
    transformer: dict[str, list[dict[str, Any]]]
    raw_internal_path: str = "raw"
    label_internal_path: str = "label"
    weight_internal_path: str | None = None


@dataclass
class UNetTrainConfig:
    """Everything ``train_unet`` needs, resolved from the YAML (``raw`` keeps the whole YAML for run.json)."""

    model: dict[str, Any]
    loss: dict[str, Any]
    eval_metric: dict[str, Any]
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    train: PhaseConfig
    val: PhaseConfig | None
    batch_size: int = 1
    validate_after_iters: int = 100
    max_iters: int = 100000
    max_epochs: int = 100000
    eval_score_higher_is_better: bool = True
    time_limit_minutes: float | None = None
    seed: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def load_unet_config(source: str | os.PathLike | dict[str, Any]) -> UNetTrainConfig:
    """Read a YAML path (or an already parsed dict), check every section, fill in the seed's defaults."""
    if isinstance(source, dict):
        data, where, base = dict(source), "config", Path.cwd()
    else:
        path = Path(source)
        data, where, base = _read_yaml(path), str(path), path.resolve().parent
    _check_keys(data, TOP_KEYS, (), where, "")
    for key in REQUIRED_TOP:
        if key not in data or data[key] is None:
            raise ConfigError(f"{where}: the key {key!r} is missing; a pytorch-3dunet training config needs the "
                              f"sections {', '.join(REQUIRED_TOP)} (see the seed's train_config*.yaml).")
    model = _section(data, "model", where)
    loss = _section(data, "loss", where)
    if "name" not in loss:
        raise ConfigError(f"{where}: the key 'loss.name' is missing; e.g. name: BCEDiceLoss.")
    eval_metric = _section(data, "eval_metric", where) if data.get("eval_metric") is not None else {"name": "MeanIoU"}
    if "name" not in eval_metric:
        raise ConfigError(f"{where}: the key 'eval_metric.name' is missing; e.g. name: MeanIoU.")
    optimizer = _section(data, "optimizer", where) if data.get("optimizer") is not None else {}
    _check_keys(optimizer, OPTIMIZER_KEYS, (), where, "optimizer.")
    scheduler = _section(data, "lr_scheduler", where) if data.get("lr_scheduler") is not None else {"name": "none"}
    _check_keys(scheduler, SCHEDULER_KEYS, (), where, "lr_scheduler.")
    if scheduler.get("name", "ReduceLROnPlateau") not in SCHEDULERS:
        raise ConfigError(f"{where}: lr_scheduler.name {scheduler.get('name')!r} is not supported; use one of "
                          f"{', '.join(SCHEDULERS)}.")

    trainer = _section(data, "trainer", where)
    _check_keys(trainer, TRAINER_USED, TRAINER_IGNORED, where, "trainer.")
    loaders = _section(data, "loaders", where)
    _check_keys(loaders, LOADER_USED, LOADER_IGNORED, where, "loaders.")
    if "train" not in loaders:
        raise ConfigError(f"{where}: the key 'loaders.train' is missing; list the training HDF5 files under "
                          "loaders.train.file_paths.")
    defaults = {k: loaders.get(k) for k in ("raw_internal_path", "label_internal_path", "weight_internal_path")}
    train = _phase(loaders["train"], "train", defaults, where, base)
    val = _phase(loaders["val"], "val", defaults, where, base) if loaders.get("val") is not None else None

    batch_size = _positive_int(trainer.get("batch_size", loaders.get("batch_size", 1)), "loaders.batch_size", where)
    validate_after = _positive_int(trainer.get("validate_after_iters", 100), "trainer.validate_after_iters", where)
    iters = _positive_int(trainer.get("iters", trainer.get("max_num_iterations", 100000)), "trainer.iters", where)
    epochs = _positive_int(trainer.get("epochs", trainer.get("max_num_epochs", 100000)), "trainer.epochs", where)
    limit = trainer.get("time_limit_minutes")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ConfigError(f"{where}: trainer.time_limit_minutes must be a positive number of minutes, got {limit!r}.")
    seed = data.get("manual_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"{where}: manual_seed must be an integer, got {seed!r}.")
    return UNetTrainConfig(
        model=model, loss=loss, eval_metric=eval_metric, optimizer=optimizer, lr_scheduler=scheduler,
        train=train, val=val, batch_size=batch_size, validate_after_iters=validate_after, max_iters=iters,
        max_epochs=epochs, eval_score_higher_is_better=bool(trainer.get("eval_score_higher_is_better", True)),
        time_limit_minutes=None if limit is None else float(limit), seed=seed, raw=data,
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    return read_config_file(path, "a pytorch-3dunet training YAML (model:, loss:, trainer:, loaders:)")


def _section(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data[key]
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be a mapping, got {type(value).__name__}.")
    return dict(value)


def _check_keys(section: dict[str, Any], used: tuple[str, ...], ignored: tuple[str, ...], where: str,
                prefix: str) -> None:
    known = used + ignored
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f" Did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(f"{where}: unknown key {prefix}{key!r}.{hint} Known keys here: {', '.join(used)}.")
        if key in ignored:
            log.debug("%s: %s%s has no effect in ScopeRT", where, prefix, key)


def _positive_int(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}.")
    return value


def _shape(value: Any, key: str, where: str) -> list[int]:
    if (not isinstance(value, list) or len(value) not in (3, 4)
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise ConfigError(f"{where}: {key} must be a list of 3 positive integers [D, H, W] (a 2D U-Net uses "
                          f"[1, H, W]), got {value!r}.")
    return list(value[-3:])


def _phase(section: Any, phase: str, defaults: dict[str, Any], where: str, base: Path) -> PhaseConfig:
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: loaders.{phase} must be a mapping with file_paths and slice_builder.")
    _check_keys(section, PHASE_KEYS, (), where, f"loaders.{phase}.")
    for key in ("file_paths", "slice_builder"):
        if key not in section:
            raise ConfigError(f"{where}: the key 'loaders.{phase}.{key}' is missing; add it (see the seed's "
                              "train_config*.yaml).")
    paths = section["file_paths"]
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not paths:
        raise ConfigError(f"{where}: loaders.{phase}.file_paths must list HDF5 files or folders.")
    files = _expand(paths, base, f"loaders.{phase}.file_paths", where)
    sb = section["slice_builder"]
    if not isinstance(sb, dict):
        raise ConfigError(f"{where}: loaders.{phase}.slice_builder must be a mapping.")
    _check_keys(sb, SLICE_KEYS, (), where, f"loaders.{phase}.slice_builder.")
    for key in ("patch_shape", "stride_shape"):
        if key not in sb:
            raise ConfigError(f"{where}: the key 'loaders.{phase}.slice_builder.{key}' is missing; e.g. "
                              f"{key}: [32, 64, 64].")
    sb = dict(sb)
    sb["patch_shape"] = _shape(sb["patch_shape"], f"loaders.{phase}.slice_builder.patch_shape", where)
    sb["stride_shape"] = _shape(sb["stride_shape"], f"loaders.{phase}.slice_builder.stride_shape", where)
    transformer = section.get("transformer") or {}
    if not isinstance(transformer, dict) or set(transformer) - {"raw", "label", "weight"}:
        bad = sorted(set(transformer) - {"raw", "label", "weight"}) if isinstance(transformer, dict) else transformer
        raise ConfigError(f"{where}: loaders.{phase}.transformer takes raw:, label: and weight: lists; "
                          f"unknown key {bad[0] if isinstance(bad, list) else bad!r}.")
    for key, steps in transformer.items():
        if not isinstance(steps, list) or any(not isinstance(s, dict) or "name" not in s for s in steps):
            raise ConfigError(f"{where}: loaders.{phase}.transformer.{key} must be a list of {{name: ...}} entries.")
    paths_of = {k: section.get(k, defaults.get(k)) for k in defaults}
    return PhaseConfig(
        file_paths=files, slice_builder=sb, transformer={k: list(v) for k, v in transformer.items()},
        raw_internal_path=paths_of["raw_internal_path"] or "raw",
        label_internal_path=paths_of["label_internal_path"] or "label",
        weight_internal_path=paths_of["weight_internal_path"],
    )


H5_SUFFIXES = (".h5", ".hdf", ".hdf5", ".hd5")


def _expand(paths: list[Any], base: Path, key: str, where: str) -> list[Path]:
    """Files as given; folders expand to their ``*.h5, *.hdf, *.hdf5, *.hd5`` files (sorted), as in the seed."""
    out: list[Path] = []
    for p in paths:
        if not isinstance(p, str) or not p:
            raise ConfigError(f"{where}: {key} must list file or folder paths (strings), got {p!r}.")
        try:
            out += _expand_one(Path(p).expanduser(), base, key, where)
        except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte in the path
            raise ConfigError(f"{where}: {key}: {p[:80]!r} is not a usable path ({exc}); fix the path.") from None
    return out


def _expand_one(path: Path, base: Path, key: str, where: str) -> list[Path]:
    if not path.is_absolute() and not path.exists() and (base / path).exists():
        path = base / path
    if path.is_dir():
        found = sorted(f for f in path.iterdir() if f.suffix.lower() in H5_SUFFIXES)
        if not found:
            raise ConfigError(f"{where}: {key}: the folder {path} holds no HDF5 file (*.h5, *.hdf, *.hdf5, *.hd5).")
        return found
    if path.is_file():
        return [path]
    raise ConfigError(f"{where}: {key}: {path} does not exist; fix the path (only paths should need changing "
                      "in a seed config).")
