"""Input normalization, computed once per input (never per tile) and applied tile by tile.

Statistics come from a bounded subsample of voxels, read plane by plane along the first axis, so a
memory-mapped volume is never loaded whole. Imports only numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scopert.card import Normalization

MAX_SAMPLES = 4_000_000
MIN_PLANES = 16  # planes read at least (all, when fewer): statistics must not come from one end of a volume


@dataclass(frozen=True)
class AppliedNormalization:
    """A fixed affine map ``(x - offset) / scale`` (with optional clipping), ready to apply to any tile."""

    offset: float
    scale: float
    clip: tuple[float, float] | None = None

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        out = (tile.astype(np.float32, copy=False) - np.float32(self.offset)) * np.float32(1.0 / self.scale)
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out


def subsample(array: np.ndarray, max_samples: int | None = None) -> np.ndarray:
    """An evenly strided subsample of about ``max_samples`` (default ``MAX_SAMPLES``) voxels, under twice that.

    Planes along the first axis are read one at a time and spread over the whole axis, at least
    ``MIN_PLANES`` of them: a volume whose planes each exceed the budget is sampled in depth, not
    judged by its first plane.
    """
    limit = MAX_SAMPLES if max_samples is None else max_samples
    total = int(np.prod(array.shape, dtype=np.int64))
    if isinstance(array, np.ndarray) and total <= limit:
        return array.ravel()
    if total <= limit:  # a lazy volume (slab reader, h5py, zarr): read it plane by plane
        return np.concatenate([np.asarray(array[i]).ravel() for i in range(array.shape[0])])
    n_planes = min(array.shape[0], max(MIN_PLANES, limit // max(1, total // array.shape[0])))
    step0 = int(np.ceil(array.shape[0] / n_planes))
    planes = range(0, array.shape[0], step0)
    per_plane = max(1, limit // len(planes))
    pieces = []
    for i in planes:
        flat = np.asarray(array[i]).ravel()
        stride = max(1, flat.size // per_plane)
        pieces.append(flat[::stride])
    return np.concatenate(pieces)


def fit_normalization(array: np.ndarray, spec: Normalization, pmin: float | None = None,
                      pmax: float | None = None) -> AppliedNormalization:
    """Turn the card's normalization into a fixed affine map for this input.

    ``pmin``/``pmax`` override the card's percentiles (3D-RCAN's ``--p_min/--p_max``). ``zscore`` with
    ``per_frame`` is handled by the caller frame by frame (each frame gets its own map).
    """
    kind = spec.kind
    if kind == "none":
        return AppliedNormalization(0.0, 1.0)
    if kind == "fixed":
        bounds = (-1.0, 1.0) if spec.symmetric else (0.0, 1.0)
        return AppliedNormalization(spec.offset, spec.scale, bounds if spec.clip else None)
    sample = subsample(array).astype(np.float64)
    if kind == "percentile":
        lo, hi = np.percentile(sample, [spec.pmin if pmin is None else pmin, spec.pmax if pmax is None else pmax])
        return AppliedNormalization(float(lo), float(hi - lo + spec.eps), (0.0, 1.0) if spec.clip else None)
    if kind == "zscore":
        std = float(sample.std(ddof=1)) if sample.size > 1 else 1.0
        return AppliedNormalization(float(sample.mean()), std if std > 0 else 1.0)
    if kind == "minmax":
        lo, hi = _exact_min_max(array)
        rng = hi - lo if hi > lo else 1.0
        if spec.symmetric:  # to [-1, 1]
            return AppliedNormalization(lo + rng / 2, rng / 2, (-1.0, 1.0) if spec.clip else None)
        return AppliedNormalization(lo, rng, (0.0, 1.0) if spec.clip else None)
    raise ValueError(f"unknown normalization kind {kind!r}")


def _exact_min_max(array: np.ndarray) -> tuple[float, float]:
    lo, hi = np.inf, -np.inf
    for i in range(array.shape[0]):
        plane = np.asarray(array[i])
        lo, hi = min(lo, float(plane.min())), max(hi, float(plane.max()))
    return lo, hi
