"""``scopert train cnnt``: train a CNNT model on the seed's HDF5 layout into a run folder.

The config is one JSON object in the seed's option names (architecture keys as in its saved run JSON, plus
the data, loss and optimizer options listed on ``CnntTrainConfig``). Training follows the seed's recipe:
HDF5 movies scaled to [0, 1] (``cnnt_data``), several patch sizes interleaved, the combined loss with
weights (``cnnt_losses``), AdamW (lr 5e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on all parameters
unless ``no_w_decay``), gradient-norm clipping at 1.0, and ReduceLROnPlateau (min, patience 5, factor 0.8,
cooldown 2, min_lr 2e-6) stepped once per epoch on the validation loss (the training loss without
validation data); ``scheduler_type: "StepLR"`` gives the seed's StepLR(5, 0.8) instead. ``load_path`` (a run
folder, a ScopeRT checkpoint or a seed ``.pt``) fine-tunes from a loaded backbone. A second call on the same
folder resumes after the last finished epoch. Differences from the seed: PyTorch's default initialization
instead of LSUV.

Must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from scopert.errors import ConfigError
from scopert.training.cnnt.data import (
    MoviePatchSampler,
    Scaling,
    load_h5_movies,
    split_movies,
    validation_batches,
)
from scopert.training.cnnt.losses import combined_loss, psnr_clipped
from scopert.training.cnnt.model import CnntConfig
from scopert.training.common.registry import get_family
from scopert.training.common.runfolder import continue_run, previous_run, read_run_info, RunInfo, write_run_info
from scopert.training.common.config_file import check_option_types, read_config_file
from scopert.training.common.trainer import Trainer, TrainResult, TrainSettings

log = logging.getLogger(__name__)

FAMILY = "cnnt"
VALIDATION_SEED_OFFSET = 1
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(CnntConfig))
PLATEAU = dict(mode="min", patience=5, factor=0.8, cooldown=2, min_lr=2e-6)
STEP_LR = dict(step_size=5, gamma=0.8)
SCHEDULERS = ("ReduceLROnPlateau", "StepLR")


@dataclass
class CnntTrainConfig:
    """The validated training config; defaults are the seed's ``main.py`` defaults where it has one."""

    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    ratio: list[float] = field(default_factory=lambda: [90.0, 5.0, 5.0])  # used only without val_files
    # ---- architecture (the seed's option names; height/width list the patch sizes) ----
    blocks: list[int] = field(default_factory=lambda: [32, 64, 96])
    blocks_per_set: int = 4
    n_head: int = 8
    norm_mode: str = "instance"
    time: int = 16
    height: list[int] = field(default_factory=lambda: [128, 160])
    width: list[int] = field(default_factory=lambda: [128, 160])
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    dropout_p: float = 0.1
    with_mixer: bool = True
    no_residual: bool = False
    is_causal: bool = False
    wrapper: str = "enhanced"
    # ---- data ----
    im_value_scale: list[float] = field(default_factory=lambda: [0.0, 65536.0])
    per_scaling: bool = False
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


class _EpochMonitor:
    """The value the plateau scheduler watches: the last validation loss, else the epoch's mean training loss."""

    def __init__(self) -> None:
        self.val_loss: float | None = None
        self.train_sum = 0.0
        self.train_steps = 0

    def take(self) -> float:
        value = self.val_loss if self.val_loss is not None else self.train_sum / max(self.train_steps, 1)
        self.val_loss, self.train_sum, self.train_steps = None, 0.0, 0
        return value


class PlateauOnMonitor:
    """ReduceLROnPlateau with a no-argument ``step()`` (as the Trainer calls it) that reads the epoch monitor."""

    def __init__(self, optimizer: torch.optim.Optimizer, monitor: Callable[[], float]) -> None:
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **PLATEAU)
        self.monitor = monitor

    def step(self) -> None:
        self.plateau.step(self.monitor())

    def state_dict(self) -> dict[str, Any]:
        return self.plateau.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau.load_state_dict(state)


class CnntTrainer(Trainer):
    """The generic Trainer with the seed's gradient-norm clipping and a monitor for the plateau scheduler."""

    def __init__(self, *args: Any, clip_grad_norm: float, monitor: _EpochMonitor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clip = clip_grad_norm
        self.epoch_monitor = monitor

    def train_step(self, batch):  # type: ignore[override]
        x, y = (self.to_tensor(a) for a in batch)
        self.optimizer.zero_grad(set_to_none=True)
        pred = self.model(x)
        loss = self.loss_fn(pred, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        with torch.no_grad():
            values = {"loss": float(loss.detach())}
            values.update({k: float(fn(pred.detach(), y)) for k, fn in self.metrics.items()})
        self.epoch_monitor.train_sum += values["loss"]
        self.epoch_monitor.train_steps += 1
        return values

    def validate(self) -> dict[str, float]:
        result = super().validate()
        self.epoch_monitor.val_loss = result.get("val_loss")
        return result


def train_cnnt(config_path: str | os.PathLike | dict[str, Any] | CnntTrainConfig, out_dir: str | os.PathLike,
               resume: bool = True, *, progress: bool = True, device: str | None = None) -> RunInfo:
    """Train (or resume) a CNNT run in ``out_dir``; returns the run's RunInfo.

    ``resume=False`` refuses a folder that already holds a run rather than overwrite it.
    """
    info, _ = train_cnnt_with_result(config_path, out_dir, resume, progress=progress, device=device)
    return info


def train_cnnt_with_result(config: str | os.PathLike | dict[str, Any] | CnntTrainConfig,
                           out_dir: str | os.PathLike, resume: bool = True, *, progress: bool = True,
                           device: str | None = None) -> tuple[RunInfo, TrainResult]:
    """``train_cnnt`` that also returns the TrainResult (epochs run, best loss, history, time)."""
    cfg = load_cnnt_config(config)
    folder = Path(out_dir)
    previous = previous_run(folder, resume, FAMILY)
    model_config = cfg.model_config()
    continue_run(previous, model_config, cfg.seed, folder)

    scaling = Scaling(tuple(cfg.im_value_scale), cfg.per_scaling)
    movies = load_h5_movies(cfg.train_files, scaling, "training")
    if cfg.val_files:
        train_movies, val_movies = movies, load_h5_movies(cfg.val_files, scaling, "validation")
    else:
        train_movies, val_movies = split_movies(movies, cfg.ratio, cfg.seed)
    cutouts = cfg.cutouts
    n_sizes = len(cutouts)
    steps = cfg.steps_per_epoch or n_sizes * math.ceil(len(train_movies) * cfg.num_samples_per_file / cfg.batch_size)
    sampler = MoviePatchSampler(train_movies, cutouts, seed=cfg.seed, valu_thres=cfg.valu_thres,
                                area_thres=cfg.area_thres, augment=cfg.augment)
    val_fn = None
    if val_movies:
        n_val = cfg.val_steps or 2 * n_sizes

        def val_fn():
            return validation_batches(val_movies, cutouts, seed=cfg.seed + VALIDATION_SEED_OFFSET, n_batches=n_val,
                                      batch_size=cfg.batch_size, valu_thres=cfg.valu_thres,
                                      area_thres=cfg.area_thres)

    loss = combined_loss(cfg.loss, cfg.loss_weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = get_family(FAMILY).build_model(model_config)
    if cfg.load_path:
        load_backbone(model, cfg.load_path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.global_lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                                  weight_decay=0.0 if cfg.no_w_decay else cfg.weight_decay)
    monitor = _EpochMonitor()
    if cfg.scheduler_type == "StepLR":
        scheduler: Any = torch.optim.lr_scheduler.StepLR(optimizer, **STEP_LR)
    else:
        scheduler = PlateauOnMonitor(optimizer, monitor.take)

    info = RunInfo(folder, FAMILY, model_config, cfg.to_dict(), {"format": "scopert-train"})
    write_run_info(info)
    settings = TrainSettings(epochs=cfg.num_epochs, steps_per_epoch=steps, batch_size=cfg.batch_size,
                             time_limit_minutes=cfg.time_limit_minutes, progress=progress, device=device)
    log.info("training cnnt, patches %s, %d training / %d validation movies, %d steps per epoch, into %s",
             cutouts, len(train_movies), len(val_movies), steps, folder)
    trainer = CnntTrainer(model, optimizer, loss, folder, sampler, settings, metrics={"psnr": psnr_clipped},
                          val_batches=val_fn, scheduler=scheduler, clip_grad_norm=cfg.clip_grad_norm,
                          monitor=monitor)
    result = trainer.fit(resume=resume)
    return info, result


def load_backbone(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load weights to fine-tune from: a run folder (its best.pt), a ScopeRT checkpoint, or a seed .pt.

    The weights must fit the configured architecture; a misfit names the first tensor and both shapes.
    """
    from scopert.training.cnnt.importer import load_state_dict, match_state_dict

    p = Path(path)
    if p.is_dir():
        p = read_run_info(p).best_checkpoint
    state = match_state_dict(model, load_state_dict(p), f"load_path {p}", "the training config")
    model.load_state_dict(state, strict=False)
    log.info("fine-tuning from %s (%d tensors loaded)", p, len(state))


__all__ = ["CnntTrainConfig", "load_cnnt_config", "train_cnnt", "train_cnnt_with_result", "load_backbone",
           "PlateauOnMonitor", "CnntTrainer"]
