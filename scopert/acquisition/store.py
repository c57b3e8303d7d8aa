"""One OME-Zarr store per acquisition: the raw frames and the restored ones, written as they arrive.

``OUT.zarr/raw`` and ``OUT.zarr/restored`` are two OME-Zarr images (``tczyx``: the MDA's time points, channels and
z-planes; the restored one with the model's scale and output channels), so any NGFF reader opens either. The
store is built at a temporary name and renamed when the acquisition ends, however it ends (finished, cancelled,
an inference error, Ctrl-C): what was received is kept, the pyramids are filled, and the top-level attributes say
how many frames each image holds and whether the sequence finished (``scopert_acquisition``). Planes never
acquired read as zeros, planes never restored too; the counts say which.

``OUT.tif`` / ``OUT.ome.tif`` instead: frames still land in an OME-Zarr working store as they arrive (a TIFF
cannot grow along two images at once), and at the end one TIFF hyperstack (t, z, c, y, x, float32: the raw
channels, then the restored ones, named Raw/Restored) is written from it time point by time point, with the
physical sizes; the working store is removed once the TIFF is complete. Raw counts are exact in float32.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scopert.errors import ConfigError, OutputError
from scopert.runtime.io.atomic import partial_path, remove_path
from scopert.runtime.io.omezarr import (
    NGFF_DEFAULT,
    _zarr,
    create_ome_zarr,
    fill_pyramid,
)
from scopert.runtime.io.outputs import OutputSpec, file_axes, open_writer, tiff_format
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
        self.tiff = self.path.suffix.lower() in (".tif", ".tiff")
        self.tmp = partial_path(self.path)
        if self.tiff:
            if raw.shape[2:] != restored.shape[2:]:
                raise ConfigError(f"-o {self.path}: a TIFF holds raw and restored frames as channels of one image, "
                                  f"but the model changes the frame from {raw.shape[2:]} to {restored.shape[2:]} "
                                  "(z, y, x); write OUT.zarr, which holds both images at their own sizes.")
            self.tmp = self.tmp.with_name(self.tmp.name + ".zarr")
        self.plans = {"raw": raw, "restored": restored}
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
            if not self.tiff:
                fill_pyramid(self.tmp / name)
        if self.tiff:
            self._write_tiff(group)
            remove_path(self.tmp)
        else:
            if self.path.exists():
                remove_path(self.path)
            os.replace(self.tmp, self.path)
        log.info("wrote %s", self.path)
        return self.path

    def _write_tiff(self, group: Any) -> None:
        """The working store as one TIFF hyperstack, one time point at a time (memory: one time point)."""
        raw, restored = group["raw/0"], group["restored/0"]
        names = (self.plans["raw"].channel_names or []) if raw.shape[1] > 1 else [""]  # one channel: Raw, Restored
        names = names if len(names) == raw.shape[1] else [f"c{k}" for k in range(raw.shape[1])]
        n_out = restored.shape[1] // raw.shape[1]
        labels = [f"Raw {n}".strip() for n in names] + [
            f"Restored {n}{f' {k}' if n_out > 1 else ''}".strip() for n in names for k in range(n_out)]
        plan = self.plans["raw"]
        axes = file_axes("tiff", "tczyx")
        t, c, z, y, x = raw.shape[0], raw.shape[1] + restored.shape[1], *raw.shape[2:]
        if t == 0:
            log.warning("no frame arrived: %s is not written", self.path)
            return
        spec = OutputSpec(self.path, "tiff", axes, (t, z, c, y, x), np.dtype(np.float32),
                          fmt=tiff_format(self.path, None), channel_names=labels,
                          physical=PhysicalSizes({a: v for a, v in plan.scale.items() if a in plan.units},
                                                 plan.units) or None)
        try:
            with open_writer(spec) as writer:
                for k in range(t):
                    both = np.concatenate([np.asarray(raw[k], np.float32), np.asarray(restored[k], np.float32)])
                    writer.write((slice(k, k + 1),) + (slice(None),) * 4, both.transpose(1, 0, 2, 3)[None])
        except OSError as e:
            raise OutputError(f"writing {self.path} failed ({e}); every frame is still in {self.tmp} (OME-Zarr)") \
                from e
