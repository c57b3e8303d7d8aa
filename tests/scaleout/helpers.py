"""Run the same job on one machine (``apply_file``) and on a cluster (``plan_volume`` + ``run_volume``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from scopert.scaleout.volume import plan_volume, run_volume
from scopert.runtime import load
from scopert.runtime.apply import ApplyOptions, apply_file, plan_apply


def single(model_path: Path, inp: Path, out: Path, **opts) -> np.ndarray:
    apply_file(load(model_path, backend="ort"), inp, out, opts=ApplyOptions(**opts))
    return read_zarr(out)


def distributed_run(model_path: Path, inp: Path, out: Path, client, block, resume: bool = False, task=None,
                    **opts):
    model = load(model_path, backend="ort")
    with plan_apply(model, inp, out, None, ApplyOptions(**opts)) as job:
        plan = plan_volume(job, block, resume, backend="ort")
    kwargs = {"task": task} if task is not None else {}
    return run_volume(plan, client, **kwargs)


def read_zarr(path: Path) -> np.ndarray:
    return zarr.open_array(str(Path(path) / "0"), mode="r")[:]
