"""``scopert train tagan``: train a TA-GAN (generator G, PatchGAN discriminator D, segmentation net S).

Per iteration, as the seed's TAGAN models do (seeds.md 2.3): ``fake = G(x)``; update D with the conditional GAN
loss; update G with ``GAN(D([x, fake]), real) * lambda_GAN + MSE(S(fake), seg) * lambda_seg`` (plus, when
``lambda_pixel > 0``, the pix2pix baseline's ``MSE(fake, target) * lambda_pixel``); update S with
``MSE(S(target), seg) * lambda_seg``. Each net has Adam(lr, betas (beta1, 0.999)) and the linear LR policy,
stepped once per epoch; weights start from normal(0, init_gain).

Run folder (the same layout ``scopert import tagan`` writes, so ``scopert export`` takes either)::

    RUN/run.json, RUN/checkpoints/best.pt        G (role generator); export with ``scopert export RUN``
    RUN/segmentor/run.json, .../best.pt          S (role segmentor); export with ``scopert export RUN/segmentor``
    RUN/checkpoints/last.pt                      G, D, S, their optimizers and schedulers, RNG states (resume)
    RUN/metrics.csv, RUN/loss.png

Validation (the ``valid/`` phase folder, else the centre crops of the training images) runs G and S in the
export's inference mode; ``val_loss`` is ``MSE(S(G(x)), seg)`` (``val_monitor: seg_fake``, the task loss) or
``MSE(G(x), target)`` (``mse``). G and S are saved as best together, when ``val_loss`` improves. At the end the
mean difference between eval and seed-test mode on the validation crops is written to run.json.

Must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from scopert.errors import ConfigError
from scopert.training.tagan import model as tagan
from scopert.training.common.runfolder import (continue_run, load_run_checkpoint, previous_run, RunInfo, save_checkpoint,
                                        write_run_info)
from scopert.training.tagan.config import TaganTrainConfig, load_tagan_config
from scopert.training.tagan.data import (
    CropSampler,
    StackLayout,
    TaganImage,
    center_crops,
    check_crop,
    load_modality_folders,
    load_stack_folder,
)
from scopert.training.tagan.losses import (
    discriminator_loss,
    generator_gan_loss,
    init_weights_normal,
    linear_lr_lambda,
    segmentation_loss,
)
from scopert.training.common.trainer import Batch, Trainer, TrainResult, TrainSettings

log = logging.getLogger(__name__)

FAMILY = "tagan"
SEGMENTOR_SUBRUN = "segmentor"
NETS = ("G", "D", "S")


# ---- the three nets as one optimizer and one scheduler for the generic Trainer -----------------------------
class GanOptimizers:
    """One Adam per net (keys G, D, S), presented to the Trainer as one optimizer.

    The Trainer saves ``model`` (= G) and ``optimizer.state_dict()`` in ``last.pt``; this state therefore also
    carries the weights of D and S, so that a resumed run continues the whole adversarial game.
    """

    def __init__(self, nets: dict[str, nn.Module], lr: float, beta1: float) -> None:
        self.nets = nets
        self.optimizers = {k: torch.optim.Adam(nets[k].parameters(), lr=lr, betas=(beta1, 0.999)) for k in NETS}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizers["G"].param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "nets": {k: self.nets[k].state_dict() for k in ("D", "S")}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("D", "S"):
            self.nets[k].load_state_dict(state["nets"][k])
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])


class GanSchedulers:
    """The seed's linear LR policy on each of the three optimizers, stepped together once per epoch."""

    def __init__(self, optimizers: GanOptimizers, cfg: TaganTrainConfig) -> None:
        rule = linear_lr_lambda(cfg.niter, cfg.niter_decay, cfg.epoch_count)
        self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, rule) for k, o in optimizers.optimizers.items()}

    def step(self) -> None:
        for s in self.schedulers.values():
            s.step()

    def state_dict(self) -> dict[str, Any]:
        return {k: s.state_dict() for k, s in self.schedulers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, s in self.schedulers.items():
            s.load_state_dict(state[k])


def _set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


class TaganTrainer(Trainer):
    """The generic Trainer with the TA-GAN update (D, then G, then S) and TA-GAN validation."""

    def __init__(self, nets: dict[str, nn.Module], optimizers: GanOptimizers, cfg: TaganTrainConfig,
                 model_configs: dict[str, dict], segmentor_folder: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(nets["G"], optimizers, _unused_loss, *args, **kwargs)
        self.nets = {k: v.to(self.device) for k, v in nets.items()}
        self.cfg = cfg
        self.model_configs = model_configs
        self.segmentor_best = segmentor_folder / "checkpoints" / "best.pt"
        self._s_best = math.inf
        if self.segmentor_best.exists():
            s_loss = load_run_checkpoint(self.segmentor_best).get("val_loss")
            self._s_best = math.inf if s_loss is None else float(s_loss)
        self._epoch = 0

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One iteration in the seed's order: D, then G, then S."""
        cfg, opt = self.cfg, self.optimizer.optimizers
        g, d, s = self.nets["G"], self.nets["D"], self.nets["S"]
        x = self.to_tensor(batch[0])
        real, seg = (self.to_tensor(a) for a in batch[1])
        for net in (g, d, s):
            net.train()
        fake = g(x)
        # D
        _set_requires_grad(d, True)
        opt["D"].zero_grad(set_to_none=True)
        loss_d = discriminator_loss(d, x, fake, real, cfg.lambda_GAN, cfg.gan_mode)
        loss_d.backward()
        opt["D"].step()
        # G (D and S are fixed here; S's gradient from this loss would be discarded by the seed anyway)
        _set_requires_grad(d, False)
        _set_requires_grad(s, False)
        opt["G"].zero_grad(set_to_none=True)
        loss_g_gan = generator_gan_loss(d, x, fake, cfg.lambda_GAN, cfg.gan_mode)
        loss_g_seg = segmentation_loss(s(fake), seg, cfg.lambda_seg)
        loss_g = loss_g_gan + loss_g_seg
        loss_pixel = None
        if cfg.lambda_pixel > 0:
            loss_pixel = nn.functional.mse_loss(fake, real) * cfg.lambda_pixel
            loss_g = loss_g + loss_pixel
        loss_g.backward()
        opt["G"].step()
        _set_requires_grad(s, True)
        # S on the real target
        opt["S"].zero_grad(set_to_none=True)
        loss_s = segmentation_loss(s(real), seg, cfg.lambda_seg)
        loss_s.backward()
        opt["S"].step()
        values = {"loss": float(loss_g.detach()), "loss_D": float(loss_d.detach()),
                  "loss_G_GAN": float(loss_g_gan.detach()), "loss_G_seg": float(loss_g_seg.detach()),
                  "loss_S": float(loss_s.detach())}
        if loss_pixel is not None:
            values["loss_pixel"] = float(loss_pixel.detach())
        return values

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """G and S in the export's inference mode on the validation crops; saves S as best with G."""
        assert self.val_batches is not None
        g = tagan.export_module(self.nets["G"], self.model_configs["G"])
        s = tagan.export_module(self.nets["S"], self.model_configs["S"])
        sums: dict[str, float] = {}
        n = 0
        for batch in self.val_batches():
            x = self.to_tensor(batch[0])
            real, seg = (self.to_tensor(a) for a in batch[1])
            fake = g(x)
            mse = float(nn.functional.mse_loss(fake, real))
            values = {
                "mse": mse,
                "psnr": 10.0 * math.log10(4.0 / max(mse, 1e-12)),  # on the [0, 1] scale (peak 1)
                "seg_fake": float(nn.functional.mse_loss(s(fake), seg)),
                "seg_real": float(nn.functional.mse_loss(s(real), seg)),
                "dice_real": dice(s(real) > 0, seg > 0),
            }
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        out = {f"val_{k}": v / max(n, 1) for k, v in sums.items()}
        out["val_loss"] = out[f"val_{self.cfg.val_monitor}"]
        if out["val_loss"] < self._s_best:  # the Trainer saves G as best on the same test
            self._s_best = out["val_loss"]
            save_checkpoint(self.segmentor_best, {"model_state_dict": self.nets["S"].state_dict(),
                                                  "val_loss": out["val_loss"], "monitor": "val_loss"})
        return out


def _unused_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover
    raise AssertionError("TaganTrainer computes its own losses")


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    inter = float((pred & target).sum())
    total = float(pred.sum() + target.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


# ---- configs, data, run folder --------------------------------------------------------------------------
def model_configs(cfg: TaganTrainConfig) -> dict[str, dict[str, Any]]:
    """The run.json model configs of G, S and D (D is saved only inside last.pt)."""
    common = {"ngf": cfg.ngf, "norm": cfg.norm, "inference_mode": cfg.inference_mode, "compat_8bit": cfg.compat_8bit}
    return {
        "G": {"role": "generator", "arch": cfg.netG, "input_nc": cfg.input_nc, "output_nc": cfg.output_nc,
              "use_dropout": not cfg.no_dropout, **common},
        "S": {"role": "segmentor", "arch": cfg.netS, "input_nc": cfg.output_nc, "output_nc": cfg.seg_nc,
              "use_dropout": False, **common},
        "D": {"role": "discriminator", "arch": "n_layers", "input_nc": cfg.input_nc + cfg.output_nc,
              "output_nc": 1, "ngf": cfg.ndf, "norm": cfg.norm, "n_layers": cfg.n_layers_D,
              "use_dropout": False},
    }


def load_images(cfg: TaganTrainConfig, phase: str, label: str) -> list[TaganImage]:
    """The images of one phase folder (``dataroot/<phase>``) in the configured layout; [] if it is absent."""
    folder = Path(cfg.dataroot) / phase
    if label == "validation" and not folder.is_dir():
        return []
    layout = StackLayout(cfg.input_nc, cfg.output_nc, cfg.seg_nc)
    if cfg.dataset_mode == "folders":
        return load_modality_folders(folder, layout, cfg.modality_dirs, cfg.compat_8bit, label)
    return load_stack_folder(folder, layout, cfg.compat_8bit, label)


def _previous_run(folder: Path, resume: bool) -> RunInfo | None:
    info = previous_run(folder, resume, FAMILY)
    if info is not None and info.source.get("format") != "scopert-train":
        raise ConfigError(f"{folder} holds an imported TA-GAN run ({info.source.get('format', '?')}), not a "
                          "training run; choose another output folder.")
    return info


def train_tagan(config: str | os.PathLike | dict[str, Any] | TaganTrainConfig, out_dir: str | os.PathLike,
                resume: bool = True, *, progress: bool = True, device: str | None = None) -> RunInfo:
    """Train (or resume) a TA-GAN run in ``out_dir``; returns G's RunInfo (S is the sub-run ``segmentor``)."""
    info, _ = train_tagan_with_result(config, out_dir, resume, progress=progress, device=device)
    return info


def train_tagan_with_result(config: str | os.PathLike | dict[str, Any] | TaganTrainConfig,
                            out_dir: str | os.PathLike, resume: bool = True, *, progress: bool = True,
                            device: str | None = None) -> tuple[RunInfo, TrainResult]:
    """``train_tagan`` that also returns the TrainResult (epochs, best val_loss, history, seconds)."""
    cfg = load_tagan_config(config)
    folder = Path(out_dir)
    previous = _previous_run(folder, resume)
    configs = model_configs(cfg)
    for cfg_one in configs.values():
        tagan.TaganConfig.from_dict(cfg_one)  # refuse a bad architecture before anything is read or written
    divisor = max(tagan.TaganConfig.from_dict(configs[k]).divisor for k in ("G", "S"))

    train_images = load_images(cfg, cfg.train_phase, "training")
    val_images = load_images(cfg, cfg.val_phase, "validation")
    check_crop(train_images, cfg.crop_size, divisor, "training")
    check_crop(val_images, cfg.crop_size, divisor, "validation")
    seed = continue_run(previous, configs["G"], cfg.seed, folder, what="generator config")
    steps = cfg.steps_per_epoch or max(1, math.ceil(len(train_images) / cfg.batch_size))
    train_config = cfg.to_dict() | {"seed": seed, "steps_per_epoch": steps, "segmentor_run": SEGMENTOR_SUBRUN,
                                    "n_train_images": len(train_images), "n_val_images": len(val_images)}

    source = CropSampler(train_images, cfg.crop_size, seed, augment_data=cfg.preprocess == "crop_rotation")
    val_crops = center_crops(val_images or train_images, cfg.crop_size)

    def val_batches() -> Iterator[Batch]:
        return iter(val_crops)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = {k: init_weights_normal(tagan.build_model(configs[k]), cfg.init_gain) for k in NETS}
    optimizers = GanOptimizers(nets, cfg.lr, cfg.beta1)
    schedulers = GanSchedulers(optimizers, cfg)

    info = RunInfo(folder, FAMILY, configs["G"], train_config, {"format": "scopert-train"})
    seg_info = RunInfo(folder / SEGMENTOR_SUBRUN, FAMILY, configs["S"],
                       {"role": "segmentor", "generator_run": "..", "seed": seed}, {"format": "scopert-train"})
    write_run_info(info)
    write_run_info(seg_info)
    # The seed runs epochs epoch_count .. niter + niter_decay; its LR rule already adds epoch_count.
    settings = TrainSettings(epochs=cfg.epochs - cfg.epoch_count + 1, steps_per_epoch=steps, batch_size=cfg.batch_size,
                             time_limit_minutes=cfg.time_limit_minutes, progress=progress, device=device)
    log.info("training TA-GAN G %s / S %s (ngf %d), crop %d, %d training / %d validation images, into %s",
             cfg.netG, cfg.netS, cfg.ngf, cfg.crop_size, len(train_images), len(val_images), folder)
    trainer = TaganTrainer(nets, optimizers, cfg, configs, seg_info.folder, folder, source, settings,
                           val_batches=val_batches, scheduler=schedulers)
    result = trainer.fit(resume=resume)
    info.train_config["inference_mode_difference"] = mode_difference(folder, val_crops, device)
    write_run_info(info)
    return info, result


@torch.no_grad()
def mode_difference(folder: Path, crops: list[Batch], device: str | None = None) -> dict[str, float]:
    """Mean and max |eval - seed_test| of the best G on the validation crops (in the [-1, 1] output scale)."""
    from scopert.training.common.runfolder import load_model

    info, g = load_model(folder)
    dev = torch.device(device) if device else torch.device("cpu")
    eval_g = tagan.export_module(g, info.model_config | {"inference_mode": "eval"}).to(dev)
    seed_g = tagan.export_module(g, info.model_config | {"inference_mode": "seed_test"}).to(dev)
    diffs = []
    for batch in crops:
        x = torch.from_numpy(np.ascontiguousarray(batch[0])).float().to(dev)
        diffs.append((eval_g(x) - seed_g(x)).abs().cpu())
    flat = torch.cat([d.flatten() for d in diffs]) if diffs else torch.zeros(1)
    return {"mean_abs": float(flat.mean()), "max_abs": float(flat.max()), "n_crops": len(diffs)}
