"""``scopert train unet``: train a pytorch-3dunet U-Net (UNet3D, ResidualUNet3D, UNet2D) from a seed-style YAML.

Reads the YAML (``unet_config``), loads and checks the HDF5 files (``unet_data``), builds the model from the
``model:`` section exactly as the importer does, writes ``run.json`` (family ``unet``), and trains with the generic
Trainer: Adam (``optimizer.learning_rate``/``weight_decay``), the YAML's loss, validation every
``trainer.validate_after_iters`` iterations (one Trainer epoch) with the loss and the eval metric, ReduceLROnPlateau
on the eval score (patience counted in validations, as in the seed), and ``best.pt`` chosen by the eval score
(higher is better unless ``eval_score_higher_is_better: false``). Training stops at ``trainer.iters``, after
``trainer.epochs`` passes over the training patches, or at ``trainer.time_limit_minutes`` (ScopeRT's key). A second
call on the same folder resumes after the last finished validation.

Not implemented: the seed's stop when the LR falls below 1e-6, its ``h5_dir`` dumps and tensorboard logs.
Must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from scopert.errors import ConfigError
from scopert.training.unet.importer import model_config_from_yaml, to_plain
from scopert.training.common.registry import get_family
from scopert.training.common.runfolder import continue_run, previous_run, RunInfo, write_run_info
from scopert.training.common.trainer import Trainer, TrainResult, TrainSettings
from scopert.training.unet.config import load_unet_config
from scopert.training.unet.data import UNetPatchSource, load_phase, validation_batches
from scopert.training.unet.losses import build_loss, build_metric

log = logging.getLogger(__name__)

FAMILY = "unet"
MONITOR = "val_objective"


def train_unet(config_path: str | os.PathLike | dict[str, Any], out_dir: str | os.PathLike, resume: bool = True,
               *, progress: bool = True, device: str | None = None) -> RunInfo:
    """Train (or resume) a U-Net run in ``out_dir`` from a pytorch-3dunet training YAML; returns its RunInfo."""
    info, _ = train_unet_with_result(config_path, out_dir, resume, progress=progress, device=device)
    return info


def train_unet_with_result(config_path: str | os.PathLike | dict[str, Any], out_dir: str | os.PathLike,
                           resume: bool = True, *, progress: bool = True,
                           device: str | None = None) -> tuple[RunInfo, TrainResult]:
    """``train_unet`` that also returns the TrainResult (epochs = validations run, best score, history)."""
    cfg = load_unet_config(config_path)
    where = str(config_path) if not isinstance(config_path, dict) else "config"
    folder = Path(out_dir)
    previous = previous_run(folder, resume, FAMILY)

    model_config = model_config_from_yaml(cfg.raw, where)
    family = get_family(FAMILY)
    from scopert.training.unet.model import UNetConfig

    arch = UNetConfig.from_dict(dict(model_config), where=f"{where}: model")
    loss_fn = build_loss(cfg.loss, arch.final_sigmoid, f"{where}: loss")
    metric_fn = build_metric(cfg.eval_metric, arch.final_sigmoid, arch.is_segmentation, f"{where}: eval_metric")

    if cfg.loss["name"] == "PixelWiseCrossEntropyLoss" and cfg.train.weight_internal_path is None:
        raise ConfigError(f"{where}: PixelWiseCrossEntropyLoss needs per-voxel weights; set "
                          "loaders.weight_internal_path (e.g. weight) and give every HDF5 file that dataset.")
    train_volumes, train_plan = load_phase(cfg.train, f"{where}: loaders.train.transformer")
    _check_channels(train_volumes, arch, where)
    if train_plan.normalizer is None or train_plan.normalizer["name"] != "Normalize":
        log.warning("%s: the exported card normalizes inputs by global min-max to [-1, 1] (the seed's Normalize); "
                    "this config normalizes raw with %s, so apply the same to inputs yourself at inference.",
                    where, None if train_plan.normalizer is None else train_plan.normalizer["name"])
    val_batches = None
    if cfg.val is not None:
        val_volumes, _ = load_phase(cfg.val, f"{where}: loaders.val.transformer")
        _check_channels(val_volumes, arch, where)
        val_batches = validation_batches(val_volumes, cfg.val.slice_builder, cfg.batch_size)

    seed = continue_run(previous, model_config, cfg.seed, folder)

    source = UNetPatchSource(train_volumes, cfg.train.slice_builder, train_plan, seed)
    per_pass = math.ceil(source.patches_per_pass / cfg.batch_size)
    max_iters = min(cfg.max_iters, cfg.max_epochs * per_pass)
    epochs = max(1, math.ceil(max_iters / cfg.validate_after_iters))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family.build_model(model_config)
    opt = cfg.optimizer
    optimizer = torch.optim.Adam(model.parameters(), lr=float(opt.get("learning_rate", 1e-4)),
                                 weight_decay=float(opt.get("weight_decay", 0.0)),
                                 betas=tuple(opt.get("betas", (0.9, 0.999))))

    train_config = {"config": to_plain(cfg.raw), "seed": seed, "max_iters": max_iters,
                    "skipped_augmentations": train_plan.skipped}
    info = RunInfo(folder, FAMILY, model_config, train_config, {"format": "scopert-train"})
    write_run_info(info)
    settings = TrainSettings(epochs=epochs, steps_per_epoch=cfg.validate_after_iters, batch_size=cfg.batch_size,
                             time_limit_minutes=cfg.time_limit_minutes, progress=progress, device=device)
    trainer = UNetTrainer(model, optimizer, loss_fn, folder, source, settings, metric=metric_fn,
                          higher_is_better=cfg.eval_score_higher_is_better, val_batches=val_batches)
    trainer.scheduler = make_scheduler(cfg.lr_scheduler, optimizer, trainer, cfg.eval_score_higher_is_better)
    log.info("training %s (%d params) on %d training patches (%d files), %d validations of %d iterations, into %s",
             arch.name, sum(p.numel() for p in model.parameters()), source.patches_per_pass, len(train_volumes),
             epochs, cfg.validate_after_iters, folder)
    result = trainer.fit(resume=resume)
    return info, result


class UNetTrainer(Trainer):
    """The generic Trainer with (raw, label, weight) batches, the eval metric, and best.pt chosen by the score."""

    def __init__(self, *args: Any, metric: Any, higher_is_better: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.last_score: float | None = None
        if self.val_batches is not None:
            self.monitor = MONITOR

    def _tensors(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x, y, w = batch
        return self.to_tensor(x), self.to_tensor(y), None if w is None else self.to_tensor(w)

    def train_step(self, batch: Any) -> dict[str, float]:
        x, y, w = self._tensors(batch)
        self.optimizer.zero_grad(set_to_none=True)
        pred = self.model(x)
        loss = self.loss_fn(pred, y, w)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        assert self.val_batches is not None
        self.model.eval()
        loss_sum, score_sum, n = 0.0, 0.0, 0
        for batch in self.val_batches():
            x, y, w = self._tensors(batch)
            pred = self.model(x)
            loss_sum += float(self.loss_fn(pred, y, w))
            score_sum += float(self.metric(pred, y, w))
            n += 1
        self.model.train()
        score = score_sum / max(n, 1)
        self.last_score = score
        return {"val_loss": loss_sum / max(n, 1), "val_eval_score": score,
                MONITOR: -score if self.higher_is_better else score}


class PlateauOnScore:
    """ReduceLROnPlateau stepped by the Trainer without arguments: it reads the trainer's last eval score."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau, trainer: UNetTrainer) -> None:
        self.scheduler, self.trainer = scheduler, trainer

    def step(self) -> None:
        if self.trainer.last_score is not None:
            self.scheduler.step(self.trainer.last_score)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def make_scheduler(spec: dict[str, Any], optimizer: torch.optim.Optimizer, trainer: UNetTrainer,
                   higher_is_better: bool) -> Any:
    """The YAML's lr_scheduler, stepped once per validation (None for ``name: none``)."""
    name = spec.get("name", "ReduceLROnPlateau")
    if name == "none":
        return None
    if name == "ReduceLROnPlateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=spec.get("mode", "max" if higher_is_better else "min"),
            factor=float(spec.get("factor", 0.1)), patience=int(spec.get("patience", 10)),
            threshold=float(spec.get("threshold", 1e-4)), min_lr=float(spec.get("min_lr", 0.0)))
        return PlateauOnScore(plateau, trainer)
    if name == "StepLR":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(spec.get("step_size", 30)),
                                               gamma=float(spec.get("gamma", 0.1)))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(spec.get("milestones", [])),
                                                gamma=float(spec.get("gamma", 0.1)))


def _check_channels(volumes: list, arch: Any, where: str) -> None:
    for vol in volumes:
        if vol.raw.shape[0] != arch.in_channels:
            raise ConfigError(f"{where}: {vol.path} has {vol.raw.shape[0]} raw channel(s) but model.in_channels is "
                              f"{arch.in_channels}; make them agree.")
