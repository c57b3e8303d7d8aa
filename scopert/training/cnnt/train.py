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

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch

from scopert.training.cnnt.data import (
    MoviePatchSampler,
    Scaling,
    load_h5_movies,
    split_movies,
    validation_batches,
)
from scopert.training.cnnt.losses import combined_loss, psnr_clipped
from scopert.training.common.registry import get_family
from scopert.training.common.runfolder import continue_run, previous_run, read_run_info, RunInfo, write_run_info
from scopert.training.common.trainer import Trainer, TrainResult, TrainSettings

from scopert.training.cnnt.config import CnntTrainConfig, PLATEAU, STEP_LR, load_cnnt_config

log = logging.getLogger(__name__)

FAMILY = "cnnt"
VALIDATION_SEED_OFFSET = 1
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
