"""CNNT's training config: the seed's ``main.py`` options (architecture from ``model.CnntConfig``), checked
before anything is read."""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any


from scopert.errors import ConfigError
from scopert.training.cnnt.losses import combined_loss
from scopert.training.cnnt.model import CnntConfig
from scopert.training.common.config_file import check_option_types, read_config_file


MODEL_KEYS = tuple(f.name for f in dataclasses.fields(CnntConfig))
PLATEAU = dict(mode="min", patience=5, factor=0.8, cooldown=2, min_lr=2e-6)
STEP_LR = dict(step_size=5, gamma=0.8)
SCHEDULERS = ("ReduceLROnPlateau", "StepLR")


@dataclass
class CnntTrainConfig(CnntConfig):
    """The validated training config; defaults are the seed's ``main.py`` defaults where it has one. The
    architecture fields (and the input scaling) are ``CnntConfig``'s, written once there; in training, height
    and width list the patch sizes (the model takes the first)."""

    height: list[int] = field(default_factory=lambda: [128, 160])  # type: ignore[assignment]
    width: list[int] = field(default_factory=lambda: [128, 160])  # type: ignore[assignment]
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    ratio: list[float] = field(default_factory=lambda: [90.0, 5.0, 5.0])  # used only without val_files
    # ---- data ----
    valu_thres: float = 0.002
    area_thres: float = 0.25
    num_samples_per_file: int = 8
    augment: bool = True
    # ---- loss and optimization ----
    loss: list[str] = field(default_factory=lambda: ["mse", "ssim"])
    loss_weights: list[float] = field(default_factory=lambda: [0.1, 1.0])
    global_lr: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1
    no_w_decay: bool = False
    clip_grad_norm: float = 1.0
    scheduler_type: str = "ReduceLROnPlateau"
    num_epochs: int = 30
    batch_size: int = 8
    steps_per_epoch: int | None = None  # default: ceil(keys * num_samples_per_file / batch) per patch size
    val_steps: int | None = None  # default: 2 batches per patch size
    load_path: str | None = None
    # ---- ScopeRT's own keys ----
    seed: int = 0
    time_limit_minutes: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def cutouts(self) -> list[tuple[int, int, int]]:
        return [(self.time, h, w) for h, w in zip(self.height, self.width)]

    def model_config(self) -> dict[str, Any]:
        """The model part of run.json (CnntConfig keys; height/width = the first patch size)."""
        values = {k: getattr(self, k) for k in MODEL_KEYS}
        values["im_value_scale"] = [float(v) for v in self.im_value_scale]
        conf = CnntConfig.from_dict(values)
        out = dataclasses.asdict(conf)
        out["blocks"] = [int(b) for b in conf.blocks]
        return out


KNOWN_KEYS = tuple(f.name for f in dataclasses.fields(CnntTrainConfig))
_POSITIVE_INT = ("blocks_per_set", "n_head", "time", "num_samples_per_file", "num_epochs", "batch_size",
                 "kernel_size")
_BOOL = ("with_mixer", "no_residual", "is_causal", "per_scaling", "augment", "no_w_decay")


def load_cnnt_config(source: str | os.PathLike | dict[str, Any] | CnntTrainConfig) -> CnntTrainConfig:
    """Read a config from a JSON path or dict, check every key, fill the defaults."""
    if isinstance(source, CnntTrainConfig):
        source = source.to_dict()
    if isinstance(source, (str, os.PathLike)):
        where = str(source)
        data = read_config_file(source, "a CNNT JSON training config")
    elif isinstance(source, dict):
        where, data = "config", dict(source)
    else:
        raise ConfigError(f"a config is a JSON file path or a dict, got {type(source).__name__}.")
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a JSON object of CNNT training options.")
    for key in data:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" Known keys: {', '.join(KNOWN_KEYS)}."
            raise ConfigError(f"{where}: unknown key {key!r}.{hint}")
    for key in ("train_files", "val_files"):
        if isinstance(data.get(key), str):
            data[key] = [data[key]]
    for key in ("height", "width", "loss", "loss_weights"):
        if key in data and not isinstance(data[key], list):
            data[key] = [data[key]]
    for key in _BOOL:
        if key in data:
            data[key] = bool(data[key])
    check_option_types(data, CnntTrainConfig, where)
    try:
        cfg = CnntTrainConfig(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    _check(cfg, where)
    return cfg


def _check(cfg: CnntTrainConfig, where: str) -> None:
    if not cfg.train_files:
        raise ConfigError(f"{where}: train_files is empty; list the HDF5 files with '<key>/noisy_im' and "
                          "'<key>/clean_im' movies.")
    for key in _POSITIVE_INT:
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{where}: {key} must be an integer >= 1, got {value!r}.")
    if len(cfg.height) != len(cfg.width) or not cfg.height:
        raise ConfigError(f"{where}: height {cfg.height} and width {cfg.width} must be non-empty lists of equal "
                          "length (one entry per patch size).")
    if cfg.norm_mode == "layer" and len(set(zip(cfg.height, cfg.width))) > 1:
        raise ConfigError(f"{where}: layer norm ties the model to one patch size, but height/width list "
                          f"{len(cfg.height)}; give one size or use instance/batch norm.")
    try:
        model = CnntConfig.from_dict(cfg.model_config())
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: an architecture option has the wrong type ({exc}).") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for h, w in zip(cfg.height, cfg.width):
        if h % model.divisor or w % model.divisor or h < model.divisor or w < model.divisor:
            raise ConfigError(f"{where}: patch {h}x{w} is not divisible by {model.divisor} "
                              f"(2**(levels-1) for {model.levels} levels); use multiples of {model.divisor}.")
    if any(loss in ("ssim", "ssim3D") for loss in cfg.loss) and min(min(cfg.height), min(cfg.width)) < 7:
        raise ConfigError(f"{where}: ssim needs patches of at least 7x7; raise height/width.")
    combined_loss(cfg.loss, cfg.loss_weights)
    if len(cfg.im_value_scale) != 2 or cfg.im_value_scale[1] <= cfg.im_value_scale[0]:
        raise ConfigError(f"{where}: im_value_scale must be [low, high] with high > low, got {cfg.im_value_scale}.")
    if not 0 < cfg.global_lr < 1:
        raise ConfigError(f"{where}: global_lr must be in (0, 1), got {cfg.global_lr}.")
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise ConfigError(f"{where}: beta1 and beta2 must be in [0, 1), got {cfg.beta1}, {cfg.beta2}.")
    if cfg.weight_decay < 0 or cfg.clip_grad_norm <= 0:
        raise ConfigError(f"{where}: weight_decay must be >= 0 and clip_grad_norm > 0.")
    if cfg.scheduler_type not in SCHEDULERS:
        raise ConfigError(f"{where}: scheduler_type {cfg.scheduler_type!r} is unknown; use one of {SCHEDULERS}.")
    if not 0 <= cfg.area_thres <= 1:
        raise ConfigError(f"{where}: area_thres must be in [0, 1], got {cfg.area_thres}.")
    for key in ("steps_per_epoch", "val_steps"):
        value = getattr(cfg, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{where}: {key} must be an integer >= 1 (or null), got {value!r}.")
    if cfg.time_limit_minutes is not None and cfg.time_limit_minutes <= 0:
        raise ConfigError(f"{where}: time_limit_minutes must be > 0 (or null).")
