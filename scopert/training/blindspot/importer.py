"""Import a SHINE PyTorch Lightning checkpoint (``epoch=N.ckpt``) into a ``blindspot`` run folder.

The Lightning file keeps the network under ``state_dict`` with the prefix ``model.`` and has no hyper-parameters,
so the architecture is read from the weights: frame_num = in-channels of ``convolution_layer0_a.0.0`` + 1, filter =
out-channels of ``first_output``, blind radius = number of ``convolution_layer0_a`` blocks - 1. With one frame the
blind-spot size is not in the weights and must be given. Imports torch lazily; must not import ``scopert.export`` or
``scopert.runtime``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from scopert.errors import CheckpointError, ConfigError
from scopert.training.unet.importer import (
    check_out_dir,
    check_state_dict,
    load_torch_file,
    to_plain,
    write_run_folder,
)
from scopert.checksum import sha256_file
from scopert.training.common.runfolder import RunInfo

log = logging.getLogger(__name__)

FORMAT = "lightning-shine"
PREFIX = "model."
_SHINE_KEYS = re.compile(
    r"^(convolution_layer0_a\.\d+\.0\.weight|convolution_layer0_b\.weight|first_output\.params"
    r"|convolution_layer(10|2)\.[0-3]\.[02]\.weight|dilated_convs(_res)?\.[0-3]\.params"
    r"|outconvs\.[02]\.weight|last_out\.weight|upsample_list\.[0-3]\.1\.weight)$"
)
_LAYER0_A = re.compile(r"^convolution_layer0_a\.(\d+)\.0\.weight$")
HINT = ("Check --model (the blind-spot size, e.g. 3x3_blind) and --frames against the training run; the weights "
        "must come from the public SHINE network (SHINE2's annulus convs are not supported).")


def import_lightning_blindspot(ckpt: str | os.PathLike, out_dir: str | os.PathLike, model: str | None = None,
                               frames: int | None = None, name: str | None = None, trust: bool = False) -> RunInfo:
    """Write the run folder ``out_dir`` from a SHINE Lightning checkpoint.

    ``model`` (``NxN_blind``) and ``frames`` are checked against what the weights say; they are only required where
    the weights cannot tell (one frame: the blind-spot size). ``name`` (default: the folder name) goes into run.json.
    The file is read without running pickled code (``argparse.Namespace`` hyper-parameters and numpy scalars are
    allowed); ``trust`` (``--trust-checkpoint``) lets the full unpickler read other objects, which can run code.
    """
    from scopert.training.common.state_dict import lightning_globals
    from scopert.training.blindspot.model import BlindSpotConfig, blind_radius, build_model

    ckpt, out_dir = Path(ckpt), Path(out_dir)
    given_radius = blind_radius(model) if model is not None else None
    if frames is not None and (not isinstance(frames, int) or isinstance(frames, bool) or frames < 1):
        raise ConfigError(f"--frames must be a positive integer, got {frames!r}.")
    check_out_dir(out_dir)

    raw = load_torch_file(ckpt, trust=trust, allow=lightning_globals())
    state = extract_lightning_state_dict(raw, ckpt)
    inferred = infer_config(state, ckpt)
    if frames is not None and frames != inferred["frame_num"]:
        raise CheckpointError(
            f"{ckpt} was trained on {inferred['frame_num']} frames, but {frames} were given (--frames). "
            f"Use --frames {inferred['frame_num']} or the checkpoint trained for {frames} frames."
        )
    radius = inferred.pop("blind")
    if radius is None and given_radius is None:
        raise ConfigError(
            f"{ckpt} is a single-frame model, whose blind-spot size is not stored in the weights; pass --model "
            "NxN_blind as used for training (e.g. --model 3x3_blind)."
        )
    if radius is not None and given_radius is not None and radius != given_radius:
        size = 2 * radius + 1
        raise CheckpointError(
            f"{ckpt} holds a {size}x{size} blind-spot model, but --model {model} was given "
            f"({2 * given_radius + 1}x{2 * given_radius + 1}). Use --model {size}x{size}_blind or drop --model."
        )
    radius = radius if radius is not None else given_radius
    model_config = {"name": f"{2 * radius + 1}x{2 * radius + 1}_blind", **inferred}
    BlindSpotConfig.from_dict(model_config, where=f"{ckpt}: inferred architecture")

    net = build_model(model_config)
    check_state_dict(net, state, ckpt, f"a SHINE {model_config['name']} with {model_config['frame_num']} frames", HINT)
    net.load_state_dict(state, strict=True)

    source = {"path": str(ckpt.resolve()), "sha256": sha256_file(ckpt), "format": FORMAT}
    train: dict[str, Any] = {"name": name or out_dir.name, "imported_from": FORMAT}
    if isinstance(raw, dict):
        for key in ("epoch", "global_step", "pytorch-lightning_version"):
            if key in raw:
                train[key] = to_plain(raw[key])
    payload = {"model_state_dict": net.state_dict(), "epoch": train.get("epoch"), "val_loss": None}
    info = write_run_folder(out_dir, "blindspot", model_config, train, source, payload)
    log.info("imported %s (%s, %d frames, filter %d) into %s", ckpt, model_config["name"],
             model_config["frame_num"], model_config["filter"], out_dir)
    return info


def extract_lightning_state_dict(raw: Any, path: Path) -> dict[str, Any]:
    """The network's weights without the ``model.`` prefix; a key that is not a SHINE weight is named."""
    import torch

    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        state = raw["state_dict"]
    elif isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state = raw
    else:
        keys = ", ".join(map(str, list(raw)[:8])) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{path} is not a PyTorch Lightning checkpoint: no 'state_dict' (found: {keys}). Pass the "
            "epoch=N.ckpt file that SHINE's ModelCheckpoint wrote."
        )
    prefixed = any(str(k).startswith(PREFIX) for k in state)
    clean = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: the state_dict has the key {key!r}, which is not a parameter name; the "
                                  "file is damaged. Pass the epoch=N.ckpt file that SHINE's ModelCheckpoint wrote.")
        bare = key[len(PREFIX):] if prefixed and key.startswith(PREFIX) else key
        if (prefixed and not key.startswith(PREFIX)) or not _SHINE_KEYS.match(bare):
            raise CheckpointError(
                f"{path} is not a SHINE blind-spot checkpoint: its key {key!r} does not fit the SHINE network "
                f"(expected keys like '{PREFIX}first_output.params'). Import it with the importer of its own family."
            )
        clean[bare] = value
    return clean


def infer_config(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """frame_num, filter, out_channels and the blind radius (None where the weights cannot tell) from the weights."""
    for key in ("first_output.params", "convolution_layer0_b.weight", "last_out.weight"):
        if key not in state:
            raise CheckpointError(f"{path}: the SHINE weight {key!r} is missing; the checkpoint is incomplete. {HINT}")
    layer0_a = sorted(int(m.group(1)) for k in state if (m := _LAYER0_A.match(k)))
    config: dict[str, Any] = {
        "filter": _size(state, "first_output.params", 0, path),
        "out_channels": _size(state, "last_out.weight", 0, path),
    }
    if layer0_a:
        if layer0_a != list(range(len(layer0_a))):
            raise CheckpointError(f"{path}: convolution_layer0_a blocks {layer0_a} are not numbered 0..n; {HINT}")
        config["frame_num"] = _size(state, "convolution_layer0_a.0.0.weight", 1, path) + 1
        config["blind"] = len(layer0_a) - 1
    else:
        config["frame_num"] = 1
        config["blind"] = None
    return config


def _size(state: dict[str, Any], key: str, axis: int, path: Path) -> int:
    """The size of ``state[key]`` along ``axis``; a non-tensor or a tensor with too few axes is named."""
    import torch

    value = state[key]
    if not isinstance(value, torch.Tensor) or value.dim() <= axis or value.shape[axis] < 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointError(f"{path}: the SHINE weight {key!r} has shape {shape}, which no SHINE network has; "
                              f"the checkpoint is damaged. {HINT}")
    return int(value.shape[axis])


def import_checkpoint(path: str | os.PathLike, out_dir: str | os.PathLike, *, config: str | os.PathLike | None = None,
                      model_name: str | None = None, frames: int | None = None, net_s: str | os.PathLike | None = None,
                      opt_txt: str | os.PathLike | None = None, trust: bool = False) -> Any:
    """The registry's importer (``scopert import blindspot``): a SHINE Lightning .ckpt."""
    return import_lightning_blindspot(path, out_dir, model=model_name, frames=frames, trust=trust)
