"""One OME-Zarr store per acquisition: the raw frames and the restored ones, written as they arrive.

``OUT.zarr/raw`` and ``OUT.zarr/restored`` are two OME-Zarr images (``tczyx``: the MDA's time points, channels and
z-planes; the restored one with the model's scale and output channels), so any NGFF reader opens either. The
store is built at a temporary name and renamed when the acquisition ends, however it ends (finished, cancelled,
an inference error, Ctrl-C): what was received is kept, the pyramids are filled, and the top-level attributes say
how many frames each image holds and whether the sequence finished (``scopert_acquisition``). Planes never
acquired read as zeros, planes never restored too; the counts say which.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scopert.errors import OutputError
from scopert.runtime.io.atomic import partial_path, remove_path
from scopert.runtime.io.omezarr import (
    NGFF_DEFAULT,
    _zarr,
    create_ome_zarr,
    fill_pyramid,
)
from scopert.runtime.io.physical import PhysicalSizes

log = logging.getLogger(__name__)

IMAGES = ("raw", "restored")


@dataclass
class ImagePlan:
    """One image of the store: its ``tczyx`` shape, dtype and scale per axis (physical units where known)."""

    shape: tuple[int, int, int, int, int]
    dtype: Any
    scale: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    channel_names: list[str] | None = None


def _cut_time(array: Any, n: int) -> None:
    """Shorten the time axis to ``n`` without visiting the chunks beyond it: none was written, and a 100,000-loop
    sequence has millions of chunk keys that zarr's plain ``resize`` would try to delete one by one."""
    shape = (n,) + tuple(array.shape[1:])
    if hasattr(array, "async_array"):  # zarr 3
        from zarr.core.sync import sync

        sync(array.async_array.resize(shape, delete_outside_chunks=False))
    else:  # zarr 2
        array.resize(shape)


class AcquisitionStore:
    """Create ``path`` (at a temporary name) with both images; ``write`` planes; ``close`` renames it."""

    def __init__(self, path: str | os.PathLike[str], raw: ImagePlan, restored: ImagePlan,
                 attrs: dict[str, Any] | None = None, ngff: str = NGFF_DEFAULT) -> None:
        zarr = _zarr()
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        remove_path(self.tmp)
        self.closed = False
        try:
            group = zarr.open_group(str(self.tmp), mode="w", zarr_format=2 if ngff == "0.4" else 3)
            group.attrs.update(attrs or {})
            self.arrays = {}
            for name, plan in zip(IMAGES, (raw, restored)):
                chunks = (1, 1, 1) + tuple(min(n, 512) for n in plan.shape[3:])
                self.arrays[name] = create_ome_zarr(
                    self.tmp / name, plan.shape, plan.dtype, "tczyx", chunks=chunks, name=name,
                    scale={a: plan.scale.get(a, 1.0) for a in "tczyx"},
                    physical=PhysicalSizes(plan.scale, plan.units) or None,
                    channel_names=plan.channel_names, ngff=ngff)
        except BaseException:
            remove_path(self.tmp)
            raise
        log.info("writing %s: raw %s, restored %s (NGFF %s)", self.path, raw.shape, restored.shape, ngff)

    def write(self, image: str, region: tuple[Any, ...], data: np.ndarray) -> None:
        """Write ``data`` at ``region`` (indices or slices over t, c, z, y, x) of ``image``."""
        array = self.arrays[image]
        try:
            array[region] = np.asarray(data, dtype=array.dtype)
        except OSError as e:
            raise OutputError(f"writing {self.path} failed: {e}; check free disk space and permissions") from e

    def close(self, summary: dict[str, Any], time_points: int | None = None) -> Path:
        """Record ``summary`` in the attributes, cut the time axis to the ``time_points`` acquired (a cancelled
        run of 100,000 loops keeps the ones it has), fill both pyramids and move the store to its final name."""
        if self.closed:
            return self.path
        self.closed = True
        zarr = _zarr()
        group = zarr.open_group(str(self.tmp), mode="r+")
        group.attrs["scopert_acquisition"] = summary
        for name in IMAGES:
            image = group[name]
            for level in image.array_keys():
                array = image[level]
                if time_points is not None and time_points < array.shape[0]:
                    _cut_time(array, time_points)
            fill_pyramid(self.tmp / name)
        if self.path.exists():
            remove_path(self.path)
        os.replace(self.tmp, self.path)
        log.info("wrote %s", self.path)
        return self.path
