"""Load and validate a TA-GAN training config (JSON or YAML), in the seed's option names.

Defaults are the seed's TAGAN_AxonalRings options (seeds.md 2.1-2.3): resnet_9blocks G, resnet_6blocks S, ngf 64,
batch norm, dropout on, vanilla GAN loss, lambda_GAN 1, lambda_seg 10, Adam(2e-4, beta1 0.5), batch 8, crop 128,
niter 900 + niter_decay 100 epochs with the linear LR decay. ScopeRT's own keys: ``dataset_mode`` names
(``stack``/``folders``, with the seed's ``axons`` and ``dendrites`` as aliases of ``stack``), ``seg_nc``,
``modality_dirs``, ``lambda_pixel`` (the pix2pix baseline's MSE; 0 = off, as in TA-GAN), ``steps_per_epoch``
(default: one pass over the training images, as the seed's epoch), ``compat_8bit``, ``inference_mode``,
``val_monitor``, ``time_limit_minutes`` and ``seed``. An unknown key or a bad value raises ConfigError naming it.

Imports the standard library, ``scopert.errors`` and the tagan model constants; must not import
``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scopert.training.common.config_file import read_config_file
from scopert.errors import ConfigError

DATASET_MODES = {"stack": None, "axons": 1, "dendrites": 2, "folders": None}
GAN_MODES = ("vanilla", "lsgan")
PREPROCESS = ("crop_rotation", "crop")
VAL_MONITORS = ("seg_fake", "mse")
G_ARCHS = ("resnet_9blocks", "resnet_6blocks", "unet_128", "unet_256")
S_ARCHS = ("resnet_9blocks", "resnet_6blocks", "unet_128", "unet_256")
NORMS = ("batch", "instance", "none")
INFERENCE_MODES = ("eval", "seed_test")


@dataclass
class TaganTrainConfig:
    """The validated TA-GAN training config (see the module docstring)."""

    dataroot: str = ""
    dataset_mode: str = "stack"
    train_phase: str = "train"
    val_phase: str = "valid"
    modality_dirs: dict[str, str] = field(default_factory=dict)
    input_nc: int = 1
    output_nc: int = 1
    seg_nc: int = 1
    netG: str = "resnet_9blocks"
    netS: str = "resnet_6blocks"
    ngf: int = 64
    ndf: int = 64
    n_layers_D: int = 3
    norm: str = "batch"
    no_dropout: bool = False
    gan_mode: str = "vanilla"
    lambda_GAN: float = 1.0
    lambda_seg: float = 10.0
    lambda_pixel: float = 0.0
    lr: float = 2e-4
    beta1: float = 0.5
    batch_size: int = 8
    crop_size: int = 128
    preprocess: str = "crop_rotation"
    niter: int = 900
    niter_decay: int = 100
    epoch_count: int = 1
    steps_per_epoch: int | None = None
    init_gain: float = 0.02
    compat_8bit: bool = False
    inference_mode: str = "eval"
    val_monitor: str = "seg_fake"
    time_limit_minutes: float | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def epochs(self) -> int:
        """The seed trains epochs ``epoch_count .. niter + niter_decay``."""
        return self.niter + self.niter_decay


_POSITIVE_INT = ("input_nc", "output_nc", "seg_nc", "ngf", "ndf", "n_layers_D", "batch_size", "crop_size",
                 "epoch_count")
_NONNEG_INT = ("niter", "niter_decay")
_NONNEG_FLOAT = ("lambda_GAN", "lambda_seg", "lambda_pixel")
_CHOICES = {"dataset_mode": tuple(DATASET_MODES), "gan_mode": GAN_MODES, "preprocess": PREPROCESS,
            "val_monitor": VAL_MONITORS, "netG": G_ARCHS, "netS": S_ARCHS, "norm": NORMS,
            "inference_mode": INFERENCE_MODES}
_BOOLS = ("no_dropout", "compat_8bit")
KNOWN_KEYS = {f.name for f in dataclasses.fields(TaganTrainConfig)}


def load_tagan_config(source: str | os.PathLike | dict[str, Any] | TaganTrainConfig) -> TaganTrainConfig:
    """Read a config from a JSON/YAML file or a dict, check every key and value, and fill in the defaults."""
    if isinstance(source, TaganTrainConfig):
        source = source.to_dict()
    if isinstance(source, (str, os.PathLike)):
        where, data = str(source), _read_file(Path(source))
    elif isinstance(source, dict):
        where, data = "config", dict(source)
    else:
        raise ConfigError(f"a config is a JSON/YAML file path or a dict, got {type(source).__name__}.")
    for key in data:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}.{hint} Known keys: {', '.join(sorted(KNOWN_KEYS))}.")
    if not data.get("dataroot"):
        raise ConfigError(f"{where}: 'dataroot' is required: the folder with the train/ (and valid/) sub-folders.")
    for key in _POSITIVE_INT:
        if key in data:
            _check_int(data[key], key, 1, where)
    for key in _NONNEG_INT:
        if key in data:
            _check_int(data[key], key, 0, where)
    if data.get("steps_per_epoch") is not None:
        _check_int(data["steps_per_epoch"], "steps_per_epoch", 1, where)
    if data.get("seed") is not None:
        _check_int(data["seed"], "seed", 0, where)
    for key in _NONNEG_FLOAT + ("lr", "init_gain", "beta1"):
        if key in data:
            v = data[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{where}: {key} must be a number >= 0, got {v!r}.")
    if "lr" in data and data["lr"] <= 0:
        raise ConfigError(f"{where}: lr must be > 0, got {data['lr']!r}; the seed uses 2e-4.")
    if "beta1" in data and not data["beta1"] < 1:
        raise ConfigError(f"{where}: beta1 must be in [0, 1), got {data['beta1']!r}; the seed uses 0.5.")
    tl = data.get("time_limit_minutes")
    if tl is not None and (isinstance(tl, bool) or not isinstance(tl, (int, float)) or tl <= 0):
        raise ConfigError(f"{where}: time_limit_minutes must be a number > 0 (or null), got {tl!r}.")
    for key, choices in _CHOICES.items():
        if key in data and data[key] not in choices:
            raise ConfigError(f"{where}: {key} is {data[key]!r}; use one of {', '.join(choices)}.")
    for key in _BOOLS:
        if key in data and not isinstance(data[key], bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {data[key]!r}.")
    if "modality_dirs" in data and not (
        isinstance(data["modality_dirs"], dict) and all(isinstance(v, str) for v in data["modality_dirs"].values())
    ):
        raise ConfigError(f"{where}: modality_dirs maps input/target/seg to sub-folder names, e.g. "
                          '{"input": "BF", "target": "SIM", "seg": "masks"}.')
    mode = data.get("dataset_mode", "stack")
    if "seg_nc" not in data and DATASET_MODES[mode] is not None:
        data["seg_nc"] = DATASET_MODES[mode]  # the seed's dendrites loader has two seg channels
    if data.get("epoch_count", 1) > data.get("niter", 900) + data.get("niter_decay", 100):
        raise ConfigError(f"{where}: epoch_count is past niter + niter_decay; nothing would be trained.")
    return TaganTrainConfig(**data)


def _check_int(value: Any, key: str, lo: int, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{where}: {key} must be an integer >= {lo}, got {value!r}.")


def _read_file(path: Path) -> dict[str, Any]:
    return read_config_file(path, "a TA-GAN JSON or YAML config")
