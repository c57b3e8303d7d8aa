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
from scopert.runtime.io import check_output_path, list_images, plan_batch
from scopert.runtime.io.outputs import check_format_option, output_kind
from scopert.runtime.io.space import check_free_space
from scopert.runtime.model import Model

log = logging.getLogger(__name__)


def is_folder_run(inp: Path) -> bool:
    """A folder of images (not a Zarr store, which is a folder that holds one image)."""
    return inp.is_dir() and not inp.name.lower().endswith(".zarr")


def check_paths(inp: Path, out: Path, gt: Path | None, out_suffix: str | None, fmt: str | None) -> None:
    """What can be said without the model: inputs exist, outputs have a known suffix and a writable folder."""
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
            check_format_option(output_kind(out / f"x{out_suffix}"), fmt, f"--suffix {out_suffix}")
        check_output_path(out / ".scopert-probe", [inp])
        if out.resolve() == inp.resolve():
            raise ConfigError(f"-o {out} is the input folder; outputs keep the input names, so they would "
                              "overwrite the inputs. Choose another output folder.")
        return
    if out_suffix:
        raise ConfigError("--suffix applies to folder runs; for one file, give the suffix in -o.")
    check_format_option(output_kind(out), fmt, out.name)
    check_output_path(out, [inp] + ([gt] if gt else []))


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
