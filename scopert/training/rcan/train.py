"""``scopert train rcan``: train a 3D-RCAN model from a seed-style config into a run folder.

Reads and checks the data (TIFF pairs), fixes the patch shape (clipped to the smallest image), writes
``run.json`` (family ``rcan``, the model config with ``ndim`` from the data and ``input_shape`` = the patch, and
the resolved train config), then trains with the generic Trainer: Keras-default Adam, the staircase LR decay,
mae/mse loss, psnr/ssim metrics. A second call on the same folder resumes after the last finished epoch.

Must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from scopert.errors import ConfigError
from scopert.training.rcan.data import (
    PairData,
    PatchSampler,
    check_same_ndim,
    collect_pairs,
    load_pairs,
    resolve_patch_shape,
)
from scopert.training.rcan.losses import SSIM_WINDOW, get_loss, get_metrics
from scopert.training.rcan.config import RcanTrainConfig, load_rcan_config
from scopert.training.common.registry import get_family
from scopert.training.common.runfolder import continue_run, previous_run, RunInfo, write_run_info
from scopert.training.common.trainer import Trainer, TrainResult, TrainSettings, keras_adam, staircase_decay

log = logging.getLogger(__name__)

FAMILY = "rcan"
VALIDATION_SEED_OFFSET = 1


def train_rcan(config: str | os.PathLike | dict[str, Any] | RcanTrainConfig, out_dir: str | os.PathLike,
               resume: bool = True, *, progress: bool = True, device: str | None = None) -> RunInfo:
    """Train (or resume) a 3D-RCAN run in ``out_dir``; returns the run's RunInfo.

    ``resume=False`` refuses a folder that already holds a run rather than overwrite it.
    """
    info, _ = train_rcan_with_result(config, out_dir, resume, progress=progress, device=device)
    return info


def train_rcan_with_result(config: str | os.PathLike | dict[str, Any] | RcanTrainConfig,
                           out_dir: str | os.PathLike, resume: bool = True, *, progress: bool = True,
                           device: str | None = None) -> tuple[RunInfo, TrainResult]:
    """``train_rcan`` that also returns the TrainResult (epochs run, best loss, history, time)."""
    cfg = load_rcan_config(config)
    folder = Path(out_dir)
    previous = previous_run(folder, resume, FAMILY)

    train_data = load_pairs(collect_pairs(cfg.training_data_dir, cfg.training_image_pairs, "training"))
    val_data = load_pairs(collect_pairs(cfg.validation_data_dir, cfg.validation_image_pairs, "validation"))
    ndim = check_same_ndim(train_data, val_data)
    patch = resolve_patch_shape(cfg.input_shape, ndim, [p.raw.shape for p in train_data + val_data])
    if "ssim" in cfg.metrics and min(patch) < SSIM_WINDOW:
        raise ConfigError(
            f"the ssim metric needs every patch axis to be at least {SSIM_WINDOW} long, but the patch is "
            f"{list(patch)}. Remove 'ssim' from metrics or use a larger input_shape / larger images."
        )

    model_config = rcan_model_config(cfg, ndim, patch)
    seed = continue_run(previous, model_config, cfg.seed, folder)
    train_config = cfg.to_dict() | {"seed": seed}
    # Everything that can refuse the config happens before the run folder is written.
    sampler_args = dict(patch_shape=patch, intensity_threshold=cfg.intensity_threshold,
                        area_ratio_threshold=cfg.area_ratio_threshold, augment=cfg.data_augmentation)
    train_source = PatchSampler(train_data, seed=seed, **sampler_args)
    val_batches = None
    if val_data:
        val_batches = _validation_batches(val_data, seed + VALIDATION_SEED_OFFSET, cfg, sampler_args)
    family = get_family(FAMILY)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family.build_model(model_config)
    optimizer = keras_adam(model.parameters(), cfg.initial_learning_rate)
    scheduler = staircase_decay(optimizer, cfg.epochs)

    info = RunInfo(folder, FAMILY, model_config, train_config, {"format": "scopert-train"})
    write_run_info(info)
    settings = TrainSettings(epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch, batch_size=cfg.batch_size,
                             time_limit_minutes=cfg.time_limit_minutes, progress=progress, device=device)
    log.info("training rcan %dD, patch %s, %d training / %d validation pairs, into %s",
             ndim, list(patch), len(train_data), len(val_data), folder)
    trainer = Trainer(model, optimizer, get_loss(cfg.loss), folder, train_source, settings,
                      metrics=get_metrics(cfg.metrics), val_batches=val_batches, scheduler=scheduler)
    result = trainer.fit(resume=resume)
    return info, result


def rcan_model_config(cfg: RcanTrainConfig, ndim: int, patch: tuple[int, ...]) -> dict[str, Any]:
    """The model part of run.json: the architecture keys of the config, ndim from the data, the patch shape."""
    return {
        "ndim": ndim,
        "num_channels": cfg.num_channels,
        "num_residual_blocks": cfg.num_residual_blocks,
        "num_residual_groups": cfg.num_residual_groups,
        "channel_reduction": cfg.channel_reduction,
        "residual_scaling": float(cfg.residual_scaling),
        "num_input_channels": 1,
        "num_output_channels": 1,
        "input_shape": list(patch),
    }


def _validation_batches(val_data: list[PairData], seed: int, cfg: RcanTrainConfig,
                        sampler_args: dict[str, Any]):
    """Validation batches as 3D-RCAN draws them (random patches, steps_per_epoch batches), but from the same
    seed every epoch, so that epochs are compared on the same patches when choosing best.pt."""

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        sampler = PatchSampler(val_data, seed=seed, **sampler_args)
        for _ in range(cfg.steps_per_epoch):
            yield sampler.next_batch(cfg.batch_size)

    return batches
