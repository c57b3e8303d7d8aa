"""Import a CNNT ``.pt``/``.pth`` state dict plus the seed's JSON config into a run folder.

The seed writes ``{run}__{date}_epoch-{n}{_last|_best}.pt`` (``torch.save(model.state_dict())``) and a
``.json`` with all its CLI options (``dict(config)``). The JSON fixes the architecture; the weights must
agree with it tensor by tensor. The seed's 80 MB causal-mask buffers are accepted and dropped.

Imports torch and scopert.training only; must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch

from scopert.errors import CheckpointError, ConfigError, OutputError
from scopert.training.common.state_dict import check_fits
from scopert.training.common.state_dict import load_state_dict as read_state_dict
from scopert.training.cnnt import model as cnnt
from scopert.training.common.config_file import read_config_file
from scopert.checksum import sha256_file
from scopert.training.common.runfolder import RUN_FILE, RunInfo, save_checkpoint, write_run_info

log = logging.getLogger(__name__)

FORMAT = "cnnt-pt"
# Seed option -> ScopeRT model-config key. Options absent from the JSON keep the seed's CLI defaults.
SEED_OPTIONS = (
    "blocks",
    "blocks_per_set",
    "n_head",
    "norm_mode",
    "height",
    "width",
    "time",
    "kernel_size",
    "stride",
    "padding",
    "dropout_p",
    "with_mixer",
    "no_residual",
)


def read_seed_config(path: str | os.PathLike) -> dict[str, Any]:
    """The seed's JSON config (all CLI options)."""
    return read_config_file(path, "the .json that CNNT saved next to the .pt")


def model_config_from_seed(seed: dict[str, Any], where: str) -> dict[str, Any]:
    """Pick the architecture options; ``height``/``width`` lists become their first entry (the model's size)."""
    cfg = {k: seed[k] for k in SEED_OPTIONS if k in seed and seed[k] is not None}
    absent = [k for k in SEED_OPTIONS if k not in cfg]
    if absent:
        log.warning("%s: options %s are absent; using the CNNT defaults for them", where, ", ".join(absent))
    try:
        conf = cnnt.CnntConfig.from_dict(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{where}: an option has the wrong type ({exc}); compare it with the CNNT defaults."
        ) from None
    out = dataclasses.asdict(conf)
    out["blocks"] = [int(b) for b in conf.blocks]
    return out


def load_state_dict(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint's raw state dict (see ``importers.state_dict``); only tensors unless ``trust``."""
    return read_state_dict(path, "the CNNT .pt (or .pth) file", trust=trust)


def match_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str, config_where: str) -> dict:
    """Drop the seed's mask buffers, then check keys and shapes; errors name the first misfit."""
    masks = set(cnnt.seed_mask_keys(model))
    for key in masks & set(state):
        if state[key].ndim != 4 or state[key].shape[-1] != state[key].shape[-2]:
            raise CheckpointError(f"{where}: {key!r} has shape {tuple(state[key].shape)}, not a square causal mask.")
    state = {k: v for k, v in state.items() if k not in masks}
    own = model.state_dict()
    top = {k.split(".", 1)[0] for k in own}
    foreign = next((k for k in state if k not in own and k.split(".", 1)[0] not in top), None)
    if foreign is not None:
        raise CheckpointError(
            f"{where}: the key {foreign!r} does not fit a CNNT model (its top-level modules are "
            f"{', '.join(sorted(top))}). Is this a checkpoint of another family? Import it with that "
            "family's importer."
        )
    check_fits(state, own, where, config_where, "Pass the JSON saved with this checkpoint.")
    return state


def import_cnnt(
    pt_path: str | os.PathLike,
    config_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str | None = None,
    overwrite: bool = False,
    trust: bool = False,
) -> RunInfo:
    """Import a CNNT checkpoint and its JSON config into the run folder ``out_dir``; returns its RunInfo.

    The .pt must hold tensors only; ``trust`` (``--trust-checkpoint``) lets the full unpickler read other
    objects, which can run code."""
    out = Path(out_dir)
    if (out / RUN_FILE).exists() and not overwrite:
        raise OutputError(f"{out} already holds a run ({RUN_FILE} exists); choose a new folder or pass overwrite.")
    pt_path = Path(pt_path)
    seed = read_seed_config(config_json)
    cfg = model_config_from_seed(seed, str(config_json))
    state = load_state_dict(pt_path, trust)
    model = cnnt.build_model(cfg)
    state = match_state_dict(model, state, str(pt_path), f"the config {config_json}")
    model.load_state_dict(state, strict=False)
    train = {"name": name or out.name, "seed_options": seed}
    source = {"path": str(pt_path.resolve()), "sha256": sha256_file(pt_path), "format": FORMAT}
    info = RunInfo(out, "cnnt", cfg, train, source)
    save_checkpoint(
        info.best_checkpoint, {"model_state_dict": model.state_dict(), "epoch": None, "imported_from": str(pt_path)}
    )
    write_run_info(info)
    log.info("imported CNNT %s (%s norm) into %s", cfg["blocks"], cfg["norm_mode"], out)
    return info


def import_checkpoint(path: str | os.PathLike, out_dir: str | os.PathLike, *, config: str | os.PathLike | None = None,
                      model_name: str | None = None, frames: int | None = None, net_s: str | os.PathLike | None = None,
                      opt_txt: str | os.PathLike | None = None, trust: bool = False) -> Any:
    """The registry's importer (``scopert import cnnt``): a CNNT run's .pt and its .json (config)."""
    return import_cnnt(path, config, out_dir, trust=trust)
