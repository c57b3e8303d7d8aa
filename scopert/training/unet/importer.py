"""Import a pytorch-3dunet checkpoint (``*.pytorch`` with ``model_state_dict``) plus its YAML into a run folder.

The architecture comes from the YAML's ``model:`` section (GroupNorm group counts cannot be read from weights). The
weights are loaded strictly into ScopeRT's ``unet`` family before anything is written, so a failed import leaves
nothing behind. Imports torch and yaml lazily; must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from scopert.errors import CheckpointError, ConfigError, OutputError
from scopert.training.common.config_file import read_config_file
from scopert.checksum import sha256_file
from scopert.training.common.runfolder import RunInfo, save_checkpoint, write_run_info

log = logging.getLogger(__name__)

FORMAT = "pytorch-3dunet"
REQUIRED_KEYS = ("name", "in_channels", "out_channels")
# Keys the seed's constructors accept with a default (the class default is used when the YAML omits them).
OPTIONAL_KEYS = ("f_maps", "layer_order", "num_groups", "num_levels", "final_sigmoid", "is_segmentation")
# Newer pytorch-3dunet options that the old API fixes; accepted only at their fixed value.
FIXED_KEYS = {"conv_kernel_size": 3, "pool_kernel_size": 2, "conv_padding": 1}
# Keys that do not change the weights or the inference graph.
IGNORED_KEYS = ("testing",)
YAML_HINT = ("Check that the YAML's model section (name, in_channels, out_channels, f_maps, num_levels, layer_order) "
             "is the one used to train this checkpoint.")


def import_pytorch3dunet(checkpoint: str | os.PathLike, config_yaml: str | os.PathLike, out_dir: str | os.PathLike,
                         name: str | None = None, trust: bool = False) -> RunInfo:
    """Write the run folder ``out_dir`` (run.json + checkpoints/best.pt) from a pytorch-3dunet checkpoint and YAML.

    ``name`` (default: the folder name) is recorded in run.json's ``train`` section. ``trust``
    (``--trust-checkpoint``) allows pickled objects beyond tensors and numpy scalars, which can run code. Raises
    ConfigError for a bad YAML, CheckpointError when the file is unreadable, holds such objects without ``trust``
    or does not fit the architecture, OutputError when ``out_dir`` is in use.
    """
    from scopert.training.unet.model import UNetConfig, build_model

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    yaml_data = read_yaml(config_yaml)
    model_config = model_config_from_yaml(yaml_data, str(config_yaml))
    UNetConfig.from_dict(model_config, where=f"{config_yaml}: model")
    check_out_dir(out_dir)

    raw = load_torch_file(checkpoint, trust=trust)
    state = extract_state_dict(raw, checkpoint)
    model = build_model(model_config)
    check_state_dict(model, state, checkpoint, f"a pytorch-3dunet {model_config['name']}", YAML_HINT)
    model.load_state_dict(state, strict=True)

    source = {"path": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint), "format": FORMAT}
    train = {"name": name or out_dir.name, "imported_from": FORMAT, "config": to_plain(yaml_data)}
    if isinstance(raw, dict):
        for key in ("epoch", "num_iterations", "best_eval_score"):
            if key in raw:
                train[key] = to_plain(raw[key])
    payload = {"model_state_dict": model.state_dict(), "epoch": train.get("epoch"), "val_loss": None}
    info = write_run_folder(out_dir, "unet", model_config, train, source, payload)
    log.info("imported %s (%s) into %s", checkpoint, model_config["name"], out_dir)
    return info


# ---- YAML ---------------------------------------------------------------------------------------------------


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    return read_config_file(path, "the YAML used to train or predict with the checkpoint (with a 'model:' section)")


def model_config_from_yaml(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``unet`` model config from a pytorch-3dunet YAML; a missing required key is named."""
    section = data.get("model")
    if not isinstance(section, dict):
        raise ConfigError(
            f"{where}: the 'model:' section is missing; pytorch-3dunet configs list the architecture there "
            "(name, in_channels, out_channels, layer_order, f_maps, num_groups, ...)."
        )
    for key in REQUIRED_KEYS:
        if key not in section:
            raise ConfigError(f"{where}: model.{key} is missing; add it to the YAML's model: section.")
    config = {key: section[key] for key in REQUIRED_KEYS + OPTIONAL_KEYS if key in section}
    for key, fixed in FIXED_KEYS.items():
        if key in section and section[key] != fixed:
            raise ConfigError(
                f"{where}: model.{key} = {section[key]!r} is not supported by this (old-API) U-Net; only {fixed} is."
            )
    extra = sorted(set(section) - set(config) - set(FIXED_KEYS) - set(IGNORED_KEYS))
    if extra:
        log.warning("%s: ignoring model keys that do not change the architecture: %s", where, ", ".join(extra))
    missing = [k for k in OPTIONAL_KEYS if k not in section]
    if missing:
        log.info("%s: using pytorch-3dunet's defaults for %s", where, ", ".join(missing))
    patch = _test_patch_shape(data)
    if patch is not None:
        axes = "yx" if config["name"] == "UNet2D" else "zyx"
        sizes = patch[-len(axes):]
        if not (config["name"] == "UNet2D" and len(patch) == 3 and patch[0] != 1):
            config["default_tile"] = {ax: int(s) for ax, s in zip(axes, sizes)}
    return config


def _test_patch_shape(data: dict[str, Any]) -> list[int] | None:
    """The prediction patch (``loaders.test.slice_builder.patch_shape``), used as the card's default tile."""
    try:
        patch = data["loaders"]["test"]["slice_builder"]["patch_shape"]
    except (KeyError, TypeError):
        return None
    if isinstance(patch, list) and patch and all(isinstance(p, int) and p > 0 for p in patch):
        return patch
    return None


# ---- checkpoint ---------------------------------------------------------------------------------------------


def load_torch_file(path: Path, trust: bool = False, allow: Sequence[Any] | None = None) -> Any:
    """The checkpoint on CPU without running pickled code (``importers.state_dict.load_checkpoint``).

    ``allow``: the harmless types of the format, numpy scalars by default (pytorch-3dunet's
    ``best_eval_score``); ``trust`` (``--trust-checkpoint``) lets the full unpickler read anything else.
    """
    from scopert.training.common.state_dict import load_checkpoint, numpy_scalar_globals

    allow = numpy_scalar_globals() if allow is None else allow
    return load_checkpoint(path, "the *.pytorch file that pytorch-3dunet's trainer wrote", trust=trust, allow=allow)


def extract_state_dict(raw: Any, path: Path) -> dict[str, Any]:
    """``model_state_dict`` of a pytorch-3dunet checkpoint, or a bare state dict; a DataParallel ``module.`` is dropped."""
    import torch

    if isinstance(raw, dict) and "model_state_dict" in raw:
        state = raw["model_state_dict"]
    elif isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state = raw
    else:
        keys = ", ".join(map(str, list(raw)[:8])) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{path} is not a pytorch-3dunet checkpoint: no 'model_state_dict' (found: {keys}). Pass the "
            "*.pytorch file that pytorch-3dunet's trainer wrote (best_checkpoint.pytorch)."
        )
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'model_state_dict' is a {type(state).__name__}, not a state dict.")
    not_names = [k for k in state if not isinstance(k, str)]  # None is a possible key
    if not_names:
        raise CheckpointError(f"{path}: the state dict has the key {not_names[0]!r}, which is not a parameter name; "
                              "the file is damaged. Pass the *.pytorch file that pytorch-3dunet's trainer wrote.")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def check_state_dict(model: Any, state: dict[str, Any], path: Path, what: str, hint: str) -> None:
    """Strict key/shape check with a message that names every key that does not map and the first bad shape.

    ``what`` names the expected model ("a pytorch-3dunet UNet3D"), ``hint`` says what to check when it fails.
    """
    from scopert.training.common.state_dict import check_values

    expected = model.state_dict()
    unexpected = [k for k in state if k not in expected]
    missing = [k for k in expected if k not in state]
    if unexpected or missing:
        first = unexpected[0] if unexpected else missing[0]
        if len(unexpected) == len(state):
            head = f"{path} does not hold {what}: its first key {first!r} does not fit (is it another model family?)."
        else:
            head = f"{path} does not match {what}: the key {first!r} does not fit."
        parts = [head]
        if unexpected:
            parts.append(f"Unexpected keys ({len(unexpected)}): {', '.join(unexpected)}.")
        if missing:
            parts.append(f"Missing keys ({len(missing)}): {', '.join(missing)}.")
        parts.append(hint)
        raise CheckpointError(" ".join(parts))
    for key, tensor in state.items():
        want = tuple(expected[key].shape)
        got = tuple(getattr(tensor, "shape", ()))
        if got != want:
            raise CheckpointError(
                f"{path}: {key} has shape {got} in the checkpoint but {want} in {what}. {hint}"
            )
    check_values(state, expected, str(path), hint)


# ---- run folder ---------------------------------------------------------------------------------------------


def check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputError(f"{out_dir} already exists and is not empty; choose a new run folder or remove it first.")


def write_run_folder(out_dir: Path, family: str, model_config: dict, train: dict, source: dict,
                      payload: dict) -> RunInfo:
    """Write into a hidden sibling folder, then rename it: an interrupted import leaves no half run folder."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.importing-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        info = RunInfo(tmp, family, model_config, train, source)
        write_run_info(info)
        save_checkpoint(info.best_checkpoint, payload)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"could not write the run folder {out_dir} ({exc}); check that it is writable.") from None
    return RunInfo(out_dir, family, model_config, train, source)


def to_plain(value: Any) -> Any:
    """JSON-safe copy (numbers, strings, lists, dicts); tensors and numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (ValueError, RuntimeError):
            pass
    return str(value)


def import_checkpoint(path: str | os.PathLike, out_dir: str | os.PathLike, *, config: str | os.PathLike | None = None,
                      model_name: str | None = None, frames: int | None = None, net_s: str | os.PathLike | None = None,
                      opt_txt: str | os.PathLike | None = None, trust: bool = False) -> Any:
    """The registry's importer (``scopert import unet``): a pytorch-3dunet checkpoint and its YAML (config)."""
    return import_pytorch3dunet(path, config, out_dir, trust=trust)
