"""``scopert train blindspot``: self-supervised SHINE training on noisy frames alone, into a run folder.

The config (JSON or YAML) uses the seed's option names: ``model`` (e.g. ``3x3_blind``), ``frame_num``, ``filter``,
``img_size``, ``batch_size``, ``learning_rate`` (or ``lr``), ``max_epochs`` (or ``epochs``), ``loss_function`` (L2, L1,
SL1, charbonnier, Mix), ``data_path`` (a folder of frames, a stack file, or a list), plus ScopeRT's
``steps_per_epoch``, ``val_frames`` (held-out frames for validation), ``resize`` ([lo, hi] or null),
``time_limit_minutes`` and ``seed``. The loss is the seed's: ``loss(model(frames), noisy centre frame)``; the blind
spot keeps the network from copying its input. Adam (0.9/0.999, eps 1e-8, no weight decay) as the seed.

Must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from scopert.errors import InputError
from scopert.training.blindspot.data import FrameAugment, FrameSampler, load_frames, validation_items
from scopert.training.common.registry import get_family
from scopert.training.common.runfolder import continue_run, previous_run, RunInfo, write_run_info
from scopert.training.common.trainer import Trainer, TrainResult, TrainSettings

from scopert.training.blindspot.config import BlindSpotTrainConfig, load_blindspot_config

log = logging.getLogger(__name__)

FAMILY = "blindspot"
VALIDATION_BATCH = 4
def _charbonnier(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((pred - target) ** 2 + 1e-6).mean()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {  # the names: config.LOSS_NAMES
    "L2": torch.nn.functional.mse_loss,
    "L1": torch.nn.functional.l1_loss,
    "SL1": torch.nn.functional.smooth_l1_loss,
    "charbonnier": _charbonnier,
    "Mix": lambda p, t: torch.nn.functional.l1_loss(p, t) + torch.nn.functional.mse_loss(p, t),
}


def blindspot_model_config(cfg: BlindSpotTrainConfig) -> dict[str, Any]:
    return {"name": cfg.model, "frame_num": cfg.frame_num, "filter": cfg.filter, "in_channels": 1,
            "out_channels": 1, "pad_mode": cfg.pad_mode}


def train_blindspot(config: str | os.PathLike | dict[str, Any] | BlindSpotTrainConfig, out_dir: str | os.PathLike,
                    resume: bool = True, *, progress: bool = True, device: str | None = None) -> RunInfo:
    """Train (or resume) a SHINE run in ``out_dir`` on noisy frames alone; returns the RunInfo."""
    info, _ = train_blindspot_with_result(config, out_dir, resume, progress=progress, device=device)
    return info


def train_blindspot_with_result(config: str | os.PathLike | dict[str, Any] | BlindSpotTrainConfig,
                                out_dir: str | os.PathLike, resume: bool = True, *, progress: bool = True,
                                device: str | None = None) -> tuple[RunInfo, TrainResult]:
    """``train_blindspot`` that also returns the TrainResult."""
    cfg = load_blindspot_config(config)
    folder = Path(out_dir)
    previous = previous_run(folder, resume, FAMILY)
    model_config = blindspot_model_config(cfg)
    family = get_family(FAMILY)
    family.build_model(model_config)  # validates the architecture before reading data
    frames = load_frames(cfg.data_path, cfg.frame_num)
    n = frames.shape[0]
    if cfg.val_frames >= n:
        raise InputError(f"val_frames = {cfg.val_frames} holds out every one of the {n} frames; lower it.")
    train_centres = list(range(n - cfg.val_frames))
    val_centres = list(range(n - cfg.val_frames, n))

    seed = continue_run(previous, model_config, cfg.seed, folder)
    augment = FrameAugment(cfg.img_size, tuple(cfg.resize) if cfg.resize else None, cfg.flips, cfg.add_noise)
    sampler = FrameSampler(frames, cfg.frame_num, augment, train_centres, seed=seed)
    val_batches = None
    if val_centres:
        items = validation_items(frames, cfg.frame_num, val_centres, cfg.img_size)
        val_batches = _batches(items)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family.build_model(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    train_config = cfg.to_dict() | {"seed": seed, "n_frames": n, "frame_shape": list(frames.shape[1:])}
    info = RunInfo(folder, FAMILY, model_config, train_config, {"format": "scopert-train"})
    write_run_info(info)
    settings = TrainSettings(epochs=cfg.max_epochs, steps_per_epoch=cfg.steps_per_epoch, batch_size=cfg.batch_size,
                             time_limit_minutes=cfg.time_limit_minutes, progress=progress, device=device)
    log.info("training blindspot %s, %d frames (%d train / %d val), window %d, into %s", cfg.model, n,
             len(train_centres), len(val_centres), cfg.frame_num, folder)
    trainer = Trainer(model, optimizer, LOSSES[cfg.loss_function], folder, sampler, settings, val_batches=val_batches)
    return info, trainer.fit(resume=resume)


def _batches(items: list[tuple[np.ndarray, np.ndarray]]) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, len(items), VALIDATION_BATCH):
            chunk = items[s:s + VALIDATION_BATCH]
            yield np.stack([x for x, _ in chunk]), np.stack([y for _, y in chunk])

    return batches
