"""Load and validate a 3D-RCAN training config (the seed's ``config.json``, plus a few keys of ours).

Every key of 3D-RCAN's ``config.json`` keeps its default, range and meaning (seeds.md 1.3 and the seed README);
ours are ``batch_size``, ``residual_scaling``, ``time_limit_minutes`` and ``seed``. Relative data paths are
taken as given (relative to the working directory), as the seed does. An unknown key or a value out of range
raises ConfigError naming the key, the value and the fix. Imports only the standard library and
``scopert.errors``; must not import ``scopert.export`` or ``scopert.runtime``.
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

LOSS_NAMES = ("mae", "mse")
METRIC_NAMES = ("psnr", "ssim")


@dataclass
class RcanTrainConfig:
    """The validated training config. Defaults are 3D-RCAN's ``train.py`` defaults."""

    training_data_dir: dict[str, str] | None = None
    training_image_pairs: list[dict[str, str]] = field(default_factory=list)
    validation_data_dir: dict[str, str] | None = None
    validation_image_pairs: list[dict[str, str]] = field(default_factory=list)
    input_shape: list[int] | None = None
    epochs: int = 300
    steps_per_epoch: int = 256
    num_channels: int = 32
    num_residual_blocks: int = 3
    num_residual_groups: int = 5
    channel_reduction: int = 8
    data_augmentation: bool = True
    intensity_threshold: float = 0.25
    area_ratio_threshold: float = 0.5
    initial_learning_rate: float = 1e-4
    loss: str = "mae"
    metrics: list[str] = field(default_factory=lambda: ["psnr"])
    # ---- ScopeRT's own keys ----
    batch_size: int = 1
    residual_scaling: float = 1.0
    time_limit_minutes: float | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def has_validation(self) -> bool:
        return bool(self.validation_data_dir or self.validation_image_pairs)


KNOWN_KEYS = tuple(f.name for f in dataclasses.fields(RcanTrainConfig))

# key -> (kind, lower bound, lower inclusive, upper bound, human range)
_NUMERIC: dict[str, tuple[str, float | None, bool, float | None, str]] = {
    "epochs": ("int", 1, True, None, ">= 1"),
    "steps_per_epoch": ("int", 1, True, None, ">= 1"),
    "num_channels": ("int", 1, True, None, ">= 1"),
    "num_residual_blocks": ("int", 1, True, None, ">= 1"),
    "num_residual_groups": ("int", 1, True, None, ">= 1"),
    "channel_reduction": ("int", 1, True, None, ">= 1"),
    # The seed README documents > 0; its code treats <= 0 as "no foreground check", so 0 is allowed to disable it.
    "intensity_threshold": ("number", 0.0, True, None, ">= 0 (0 turns the foreground check off)"),
    "area_ratio_threshold": ("number", 0.0, True, 1.0, "0.0 ~ 1.0"),
    "initial_learning_rate": ("number", 1e-6, True, None, ">= 1e-6"),
    "batch_size": ("int", 1, True, None, ">= 1"),
    "residual_scaling": ("number", 0.0, False, None, "> 0"),
    "time_limit_minutes": ("number", 0.0, False, None, "> 0 (or null for no limit)"),
    "seed": ("int", 0, True, None, ">= 0 (or null for a random seed)"),
}


def load_rcan_config(source: str | os.PathLike | dict[str, Any] | RcanTrainConfig) -> RcanTrainConfig:
    """Read a config from a JSON file path or a dict, check every key, and fill in the defaults."""
    if isinstance(source, RcanTrainConfig):
        source = source.to_dict()
    if isinstance(source, (str, os.PathLike)):
        where = str(source)
        data = _read_json(Path(source))
    elif isinstance(source, dict):
        where = "config"
        data = dict(source)
    else:
        raise ConfigError(f"a config is a JSON file path or a dict, got {type(source).__name__}.")

    for key in data:
        if key not in KNOWN_KEYS:
            raise ConfigError(_unknown_key_message(key, where))

    for key, (kind, lo, lo_incl, hi, text) in _NUMERIC.items():
        if key in data:
            _check_number(data[key], key, kind, lo, lo_incl, hi, text, where)
    if "data_augmentation" in data and not isinstance(data["data_augmentation"], bool):
        raise ConfigError(
            f"{where}: data_augmentation must be true or false, got {data['data_augmentation']!r}."
        )
    if "loss" in data and data["loss"] not in LOSS_NAMES:
        raise ConfigError(f"{where}: loss is {data['loss']!r}; use one of {', '.join(LOSS_NAMES)}.")
    if "metrics" in data:
        metrics = data["metrics"]
        if isinstance(metrics, str):  # the seed README shows a bare string as the default
            metrics = [metrics]
        if not isinstance(metrics, list) or any(m not in METRIC_NAMES for m in metrics):
            raise ConfigError(
                f"{where}: metrics is {data['metrics']!r}; use a list drawn from {', '.join(METRIC_NAMES)}, "
                'e.g. ["psnr", "ssim"].'
            )
        data["metrics"] = list(dict.fromkeys(metrics))
    if "input_shape" in data and data["input_shape"] is not None:
        shape = data["input_shape"]
        if (
            not isinstance(shape, list)
            or not 2 <= len(shape) <= 3
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)
        ):
            raise ConfigError(
                f"{where}: input_shape is {shape!r}; use 2 or 3 positive integers, [Y, X] or [Z, Y, X], "
                "e.g. [16, 256, 256]."
            )
    for key in ("training_data_dir", "validation_data_dir"):
        if data.get(key) is not None:
            _check_raw_gt(data[key], key, where)
    for key in ("training_image_pairs", "validation_image_pairs"):
        if key in data:
            pairs = data[key]
            if pairs is None or pairs == []:  # to_dict() writes [] for "none given"
                data[key] = []
                continue
            if not isinstance(pairs, list):
                raise ConfigError(
                    f"{where}: {key} must be a list of {{\"raw\": ..., \"gt\": ...}} objects, got {pairs!r}."
                )
            for i, pair in enumerate(pairs):
                _check_raw_gt(pair, f"{key}[{i}]", where)

    if not data.get("training_data_dir") and not data.get("training_image_pairs"):
        raise ConfigError(
            f"{where}: no training data. Set training_data_dir {{\"raw\": DIR, \"gt\": DIR}} "
            "and/or training_image_pairs [{\"raw\": FILE, \"gt\": FILE}, ...]."
        )

    cfg = RcanTrainConfig(**data)
    if cfg.num_channels < cfg.channel_reduction:
        raise ConfigError(
            f"{where}: num_channels ({cfg.num_channels}) must be at least channel_reduction "
            f"({cfg.channel_reduction}), or the channel attention has no channels. Raise num_channels or lower "
            "channel_reduction."
        )
    return cfg


def _read_json(path: Path) -> dict[str, Any]:
    return read_config_file(path, "the path of a 3D-RCAN JSON training config")


def _unknown_key_message(key: str, where: str) -> str:
    close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{where}: unknown key {key!r}.{hint} Known keys: {', '.join(KNOWN_KEYS)}."


def _check_number(
    value: Any, key: str, kind: str, lo: float | None, lo_incl: bool, hi: float | None, text: str, where: str
) -> None:
    if value is None and key in ("time_limit_minutes", "seed"):
        return
    ok_type = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        noun = "an integer" if kind == "int" else "a number"
        raise ConfigError(f"{where}: {key} must be {noun} ({text}), got {value!r}.")
    too_low = lo is not None and (value < lo if lo_incl else value <= lo)
    too_high = hi is not None and value > hi
    if too_low or too_high or value != value:  # value != value catches NaN
        raise ConfigError(f"{where}: {key} = {value!r} is out of range; allowed range: {text}.")


def _check_raw_gt(entry: Any, key: str, where: str) -> None:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: {key} must be an object {{\"raw\": PATH, \"gt\": PATH}}, got {entry!r}.")
    for sub in entry:
        if sub not in ("raw", "gt"):
            close = difflib.get_close_matches(str(sub), ("raw", "gt"), n=1, cutoff=0.3)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown key {sub!r} in {key}.{hint} Use exactly \"raw\" and \"gt\".")
    for sub in ("raw", "gt"):
        if not isinstance(entry.get(sub), str) or not entry.get(sub):
            raise ConfigError(f"{where}: {key} needs a {sub!r} path (a string); got {entry.get(sub)!r}.")
