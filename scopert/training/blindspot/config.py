"""The blind-spot denoiser's training config: SHINE's options and ScopeRT's, checked before anything is read."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from scopert.errors import ConfigError
from scopert.training.common.config_file import check_option_types, read_config_file


LOSS_NAMES = ("L2", "L1", "SL1", "charbonnier", "Mix")  # train.LOSSES holds the functions
ALIASES = {"lr": "learning_rate", "epochs": "max_epochs", "model_name": "model", "name": "model",
           "loss": "loss_function", "data": "data_path", "data_dir": "data_path"}


@dataclass
class BlindSpotTrainConfig:
    """The training options (seed names; see the module docstring)."""

    data_path: Any = None
    model: str = "3x3_blind"
    frame_num: int = 5
    filter: int = 64
    img_size: int = 128
    batch_size: int = 16
    learning_rate: float = 1e-4
    max_epochs: int = 200
    steps_per_epoch: int = 50
    loss_function: str = "L2"
    val_frames: int = 0
    resize: list[int] | None = field(default_factory=lambda: [256, 512])
    flips: bool = True
    add_noise: bool = True
    pad_mode: str = "seed"
    time_limit_minutes: float | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data_path"] = ([str(p) for p in self.data_path] if isinstance(self.data_path, (list, tuple))
                          else str(self.data_path))
        return d


def load_blindspot_config(config: str | os.PathLike | dict[str, Any] | BlindSpotTrainConfig) -> BlindSpotTrainConfig:
    """Read and check a config file (JSON/YAML) or mapping; relative data paths are resolved against the file."""
    if isinstance(config, BlindSpotTrainConfig):
        return config
    base = None
    if isinstance(config, dict):
        data = dict(config)
    else:
        path = Path(config)
        data = read_config_file(path, "a SHINE JSON or YAML training config")
        base = path.parent
    data = {ALIASES.get(k, k): v for k, v in data.items()}
    known = [f.name for f in dataclasses.fields(BlindSpotTrainConfig)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"blindspot config: unknown key {unknown[0]!r}. Known keys: {', '.join(known)}.")
    check_option_types(data, BlindSpotTrainConfig, "blindspot config" if base is None else f"blindspot config {path}",
                       {"data_path": "str | list[str] | None"})
    if data.get("data_path") in (None, "", []):
        raise ConfigError("blindspot config: 'data_path' is missing; set it to a folder of noisy frames or a stack.")
    cfg = BlindSpotTrainConfig(**data)
    if base is not None:
        paths = cfg.data_path if isinstance(cfg.data_path, (list, tuple)) else [cfg.data_path]
        paths = [str(p) if Path(p).is_absolute() else str(base / p) for p in paths]
        cfg.data_path = paths if isinstance(cfg.data_path, (list, tuple)) else paths[0]
    _check(cfg)
    return cfg


def _positive_int(cfg: BlindSpotTrainConfig, key: str, minimum: int = 1) -> None:
    v = getattr(cfg, key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"blindspot config: {key} must be an integer >= {minimum}, got {v!r}.")


def _check(cfg: BlindSpotTrainConfig) -> None:
    for key in ("frame_num", "filter", "img_size", "batch_size", "max_epochs", "steps_per_epoch"):
        _positive_int(cfg, key)
    _positive_int(cfg, "val_frames", 0)
    if cfg.img_size % 8:
        raise ConfigError(f"blindspot config: img_size {cfg.img_size} must be a multiple of 8 (three 2x poolings).")
    if not isinstance(cfg.learning_rate, (int, float)) or not cfg.learning_rate > 0:
        raise ConfigError(f"blindspot config: learning_rate must be > 0, got {cfg.learning_rate!r}.")
    if cfg.loss_function not in LOSS_NAMES:
        raise ConfigError(f"blindspot config: loss_function {cfg.loss_function!r} is not one of {', '.join(LOSS_NAMES)}.")
    if cfg.resize is not None:
        r = list(cfg.resize)
        if len(r) != 2 or not all(isinstance(v, int) for v in r) or not 0 < r[0] < r[1]:
            raise ConfigError(
                f"blindspot config: resize must be [lo, hi] with 0 < lo < hi (or null), got {cfg.resize!r}.")
    if cfg.time_limit_minutes is not None and not cfg.time_limit_minutes > 0:
        raise ConfigError(f"blindspot config: time_limit_minutes must be > 0, got {cfg.time_limit_minutes!r}.")
