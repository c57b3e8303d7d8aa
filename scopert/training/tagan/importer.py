"""Import TA-GAN ``.pth`` checkpoints (raw state dicts of netG and optionally netS) into run folders.

The seed saves ``{epoch}_net_G.pth`` / ``{epoch}_net_S.pth`` with ``torch.save(net.state_dict())``, possibly in
the legacy (non-zip) format of torch 1.0, and its options as a ``{phase}_opt.txt`` table. The architecture is
read from opt.txt when given (and checked against the weights), otherwise inferred from the weights.
G goes to ``out_dir``; S to the sub-run ``out_dir/segmentor``.

Imports torch and scopert.training only; must not import ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from scopert.errors import CheckpointError, ConfigError, OutputError
from scopert.training.common.state_dict import check_fits
from scopert.training.common.state_dict import load_state_dict as read_state_dict
from scopert.training.tagan import model as tagan
from scopert.checksum import sha256_file
from scopert.training.common.runfolder import RUN_FILE, RunInfo, save_checkpoint, write_run_info

log = logging.getLogger(__name__)

SEGMENTOR_SUBRUN = "segmentor"
FORMAT = "tagan-pth"
_OPT_LINE = re.compile(r"^\s*([A-Za-z_]\w*)\s*:\s?(.*?)\s*(?:\[default:.*\])?\s*$")
_OPT_KEYS = ("input_nc", "output_nc", "netG", "netS", "norm", "ngf", "no_dropout")


def parse_opt_txt(path: str | os.PathLike) -> dict[str, Any]:
    """Read the seed's options table (``          input_nc: 1      [default: 3]``) into typed values."""
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the TA-GAN options file {path} ({exc.strerror}); pass the run's opt.txt."
        ) from None
    opts: dict[str, Any] = {}
    for line in lines:
        if line.lstrip().startswith("---"):
            continue
        match = _OPT_LINE.match(line)
        if match:
            opts[match.group(1)] = _parse_value(match.group(2))
    if not opts:
        raise ConfigError(
            f"{path} holds no 'name: value' option lines; pass the train_opt.txt or test_opt.txt that TA-GAN "
            "wrote next to the checkpoints."
        )
    return opts


def _parse_value(text: str) -> Any:
    text = text.strip()
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def load_state_dict(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint's raw state dict (see ``importers.state_dict``); only tensors unless ``trust``."""
    return read_state_dict(path, "the path of a TA-GAN *_net_G.pth file", trust=trust)


def infer_config(state: dict[str, torch.Tensor], role: str, where: str) -> dict[str, Any]:
    """Architecture from the weights alone. Dropout leaves no weights, so use_dropout keeps the seed default."""
    first = next(iter(state))
    if "model.0.weight" in state:
        raise CheckpointError(
            f"{where} looks like a PatchGAN discriminator (it has 'model.0.weight'); pass the *_net_G.pth "
            "(generator) or *_net_S.pth (segmentation) file instead."
        )
    if "model.1.weight" in state and state["model.1.weight"].ndim == 4 and state["model.1.weight"].shape[-1] == 7:
        blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.conv_block\.", k))})
        n_blocks = len(blocks)
        arch = {9: "resnet_9blocks", 6: "resnet_6blocks"}.get(n_blocks)
        if arch is None:
            raise CheckpointError(
                f"{where}: a ResNet generator with {n_blocks} blocks is not a TA-GAN architecture (6 or 9)."
            )
        head = f"model.{10 + n_blocks + 6 + 1}.weight"
        if head not in state:
            raise CheckpointError(f"{where}: the ResNet output conv {head!r} is missing; the file is incomplete.")
        _check_conv(state, head, where)
        w1 = state["model.1.weight"]
        cfg = {
            "arch": arch,
            "input_nc": int(w1.shape[1]),
            "ngf": int(w1.shape[0]),
            "output_nc": int(state[head].shape[0]),
        }
        segmentor_blocks = f"model.{blocks[0]}.conv_block.5.weight" in state if blocks else role == "segmentor"
        if segmentor_blocks != (role == "segmentor"):
            log.warning(
                "%s: block layout is that of a %s, imported as %s",
                where,
                "segmentor" if segmentor_blocks else "generator",
                role,
            )
            role = "segmentor" if segmentor_blocks else "generator"
    elif "model.model.0.weight" in state:
        num_downs, prefix = 1, "model.model.1."  # the outermost level, then one downconv per nested level
        while f"{prefix}model.1.weight" in state:
            num_downs += 1
            prefix += "model.3."
        arch = {v: k for k, v in tagan.UNET_ARCHS.items()}.get(num_downs)
        if arch is None:
            raise CheckpointError(f"{where}: a U-Net with {num_downs} levels is not a TA-GAN architecture (5, 7 or 8).")
        if "model.model.3.weight" not in state:
            raise CheckpointError(
                f"{where}: the U-Net output conv 'model.model.3.weight' is missing; the file is incomplete."
            )
        w0 = _check_conv(state, "model.model.0.weight", where)
        up = _check_conv(state, "model.model.3.weight", where)
        cfg = {"arch": arch, "input_nc": int(w0.shape[1]), "ngf": int(w0.shape[0]), "output_nc": int(up.shape[1])}
    else:
        raise CheckpointError(
            f"{where}: the key {first!r} does not fit a TA-GAN network (expected 'model.1.weight' of a ResNet "
            "generator or 'model.model.0.weight' of a U-Net). Is this a checkpoint of another family? Import it "
            "with that family's importer."
        )
    norm_key = "model.2.weight" if cfg["arch"].startswith("resnet") else "model.model.1.model.2.weight"
    bias_key = "model.1.bias" if cfg["arch"].startswith("resnet") else "model.model.0.bias"
    cfg["norm"] = "batch" if norm_key in state else ("instance" if bias_key in state else "none")
    cfg["role"] = role
    if role == "generator":
        cfg["use_dropout"] = True  # the seed default (no --no_dropout); dropout leaves no weights to tell
    return cfg


def _check_conv(state: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    """A conv weight (4 axes) that the architecture is read from; anything else is named."""
    weight = state[key]
    if weight.dim() != 4 or 0 in weight.shape:
        raise CheckpointError(f"{where}: {key!r} has shape {tuple(weight.shape)}, not that of a 2D conv weight; the "
                              "file is damaged or not a TA-GAN checkpoint.")
    return weight


def config_from_opt(opts: dict[str, Any], role: str, inferred: dict[str, Any], where: str) -> dict[str, Any]:
    """The architecture opt.txt describes. S's channels are not options in the seed, so they come from the weights."""
    missing = [k for k in ("ngf", "norm", "netG" if role == "generator" else "netS") if k not in opts]
    if role == "generator":
        missing += [k for k in ("input_nc", "output_nc") if k not in opts]
    if missing:
        raise ConfigError(f"{where}: the option {missing[0]!r} is missing; pass the complete opt.txt TA-GAN wrote.")
    cfg = {
        "role": role,
        "arch": opts["netG"] if role == "generator" else opts["netS"],
        "ngf": opts["ngf"],
        "norm": opts["norm"],
        "input_nc": opts["input_nc"] if role == "generator" else inferred["input_nc"],
        "output_nc": opts["output_nc"] if role == "generator" else inferred["output_nc"],
    }
    if role == "generator":
        cfg["use_dropout"] = not bool(opts.get("no_dropout", False))
    return cfg


def match_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str, config_hint: str) -> dict:
    """Check keys and shapes against ``model``; errors name the first key or tensor that does not fit."""
    own = model.state_dict()
    inorm_stats = {
        f"{name}.{s}"
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.InstanceNorm2d)
        for s in ("running_mean", "running_var", "num_batches_tracked")
    }
    state = {k: v for k, v in state.items() if k not in inorm_stats}  # the seed drops these on load, too
    check_fits(state, own, where, config_hint,
               "Fix the options (opt.txt), or leave them out to infer the architecture from the weights; a file "
               "of another family needs that family's importer.")
    return state


def _import_one(
    path: Path, role: str, opts: dict[str, Any] | None, opt_txt: str | None, folder: Path, name: str, extra: dict,
    trust: bool = False,
) -> RunInfo:
    where = str(path)
    state = load_state_dict(path, trust)
    inferred = infer_config(state, role, where)
    if opts is not None:
        cfg = config_from_opt(opts, role, inferred, str(opt_txt))
        hint = f"the options in {opt_txt}"
    else:
        cfg = inferred
        hint = "the architecture inferred from the weights"
        log.info("%s: no opt.txt; inferred %s", where, cfg)
    cfg.setdefault("inference_mode", "eval")
    cfg.setdefault("compat_8bit", False)
    model = tagan.build_model(cfg)
    state = match_state_dict(model, state, where, hint)
    model.load_state_dict(state, strict=False)
    train = {"name": name, "role": role, "seed_options": opts or {}, **extra}
    info = RunInfo(
        folder, "tagan", cfg, train, {"path": str(path.resolve()), "sha256": sha256_file(path), "format": FORMAT}
    )
    save_checkpoint(
        info.best_checkpoint, {"model_state_dict": model.state_dict(), "epoch": None, "imported_from": str(path)}
    )
    write_run_info(info)
    return info


def import_tagan(
    net_g: str | os.PathLike,
    out_dir: str | os.PathLike,
    net_s: str | os.PathLike | None = None,
    opt_txt: str | os.PathLike | None = None,
    name: str | None = None,
    overwrite: bool = False,
    trust: bool = False,
) -> RunInfo:
    """Import a TA-GAN generator (and segmentation net) into the run folder ``out_dir``.

    S, when given, becomes the run folder ``out_dir/segmentor``; G's run.json names it under
    ``train.segmentor_run``. Returns G's RunInfo. The files must hold tensors only; ``trust``
    (``--trust-checkpoint``) lets the full unpickler read other objects, which can run code.
    """
    out = Path(out_dir)
    if (out / RUN_FILE).exists() and not overwrite:
        raise OutputError(f"{out} already holds a run ({RUN_FILE} exists); choose a new folder or pass overwrite.")
    opts = parse_opt_txt(opt_txt) if opt_txt is not None else None
    run_name = name or out.name
    extra: dict[str, Any] = {}
    seg_info = None
    if net_s is not None:
        seg_info = _import_one(
            Path(net_s), "segmentor", opts, opt_txt, out / SEGMENTOR_SUBRUN, f"{run_name}-segmentor", {}, trust
        )
        extra["segmentor_run"] = SEGMENTOR_SUBRUN
    try:
        info = _import_one(Path(net_g), "generator", opts, opt_txt, out, run_name, extra, trust)
    except Exception:
        if seg_info is not None:  # nothing half-written: the S sub-run alone is not a usable import
            _remove_run(seg_info.folder)
        raise
    log.info("imported TA-GAN %s into %s", info.model_config["arch"], out)
    return info


def _remove_run(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    folder.rmdir()


def import_checkpoint(path: str | os.PathLike, out_dir: str | os.PathLike, *, config: str | os.PathLike | None = None,
                      model_name: str | None = None, frames: int | None = None, net_s: str | os.PathLike | None = None,
                      opt_txt: str | os.PathLike | None = None, trust: bool = False) -> Any:
    """The registry's importer (``scopert import tagan``): TA-GAN's N_net_G.pth (with net_s, opt_txt)."""
    return import_tagan(path, out_dir, net_s=net_s, opt_txt=opt_txt, trust=trust)
