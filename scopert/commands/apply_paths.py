"""Path checks and folder planning for ``scopert apply``, done before any model loads or tile runs.

A folder run plans every file first (headers only), so a bad file, a wrong axis or a full disk is reported
before the first image is restored; outputs that already exist are complete (atomic writes) and are skipped,
so rerunning an interrupted folder run resumes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from scopert.errors import ConfigError, InputError
from scopert.runtime.apply import ApplyOptions, plan_apply
from scopert.runtime.io import check_output_path, list_images, output_path_for, plan_batch
from scopert.runtime.io.outputs import check_format_option, output_kind
from scopert.runtime.io.space import check_free_space
from scopert.runtime.model import Model

log = logging.getLogger(__name__)


def is_folder_run(inp: Path) -> bool:
    """A folder of images (not a Zarr store, which is a folder that holds one image)."""
    return inp.is_dir() and not inp.name.lower().endswith(".zarr")


def check_paths(inp: Path, out: Path, gt: Path | None, out_suffix: str | None, fmt: str | None,
                overwrite: bool = False, ngff: str | None = None) -> Path:
    """What can be said without the model: inputs exist, outputs have a known suffix and a writable folder.

    Returns the output path: for one input and an existing folder as ``-o``, the input's name inside it (with
    ``--suffix`` when given). An existing output of one input is replaced only with ``--overwrite``."""
    if not inp.exists():
        raise InputError(f"-i {inp} does not exist; check the path.")
    if gt is not None and not gt.exists():
        raise InputError(f"-g {gt} does not exist; check the path.")
    if is_folder_run(inp):
        if out.suffix and not out.is_dir():
            raise ConfigError(f"-i {inp} is a folder, so -o must be a folder too (got {out}).")
        if gt is not None and not gt.is_dir():
            raise ConfigError(f"-i {inp} is a folder, so -g must be a folder of ground truths too (got {gt}).")
        if out_suffix:
            check_format_option(output_kind(out / f"x{out_suffix}"), fmt, f"--suffix {out_suffix}", ngff)
        check_output_path(out / ".scopert-probe", [inp])
        if out.resolve() == inp.resolve():
            raise ConfigError(f"-o {out} is the input folder; outputs keep the input names, so they would "
                              "overwrite the inputs. Choose another output folder.")
        return out
    if out.is_dir() and not out.name.lower().endswith(".zarr"):  # -o results/: the input's name inside it
        out = output_path_for(inp, out, out_suffix)
    elif out_suffix:
        raise ConfigError("--suffix applies when -o is a folder; for one output file, give the suffix in -o.")
    check_format_option(output_kind(out), fmt, out.name, ngff)
    check_output_path(out, [inp] + ([gt] if gt else []))
    if out.exists() and not overwrite:
        raise ConfigError(f"-o {out} exists; pass --overwrite to replace it (or choose another name).")
    return out


def plan_folder(model: Model, inp: Path, out: Path, gt: Path | None, opts: ApplyOptions,
                out_suffix: str | None, overwrite: bool) -> list[tuple[Path, Path, Path | None]]:
    """(input, output, ground truth) still to do, each planned (and closed again) before any runs."""
    images = list_images(inp)
    gts: list[Path | None] = list(list_images(gt)) if gt else [None] * len(images)
    if len(gts) != len(images):
        raise ConfigError(f"the ground-truth folder holds {len(gts)} images, the input folder {len(images)}; "
                          "they must match one to one (sorted by name).")
    gt_of = dict(zip(images, gts))
    todo = plan_batch(images, out, out_suffix, overwrite=overwrite)
    skipped = len(images) - len(todo)
    if skipped:
        log.info("%d of %d outputs in %s exist and are complete; skipping them (--overwrite redoes them)",
                 skipped, len(images), out)
    need = 0
    for src, dst in todo:
        with plan_apply(model, src, dst, gt_of[src], opts) as job:
            need += job.out.nbytes
    check_free_space(out / "x", need, f"the {len(todo)} outputs")
    return [(src, dst, gt_of[src]) for src, dst in todo]
