"""Paired-image training data as 3D-RCAN reads it: TIFF pairs, percentile normalization, patch sampling.

- ``collect_pairs``: explicit ``{raw, gt}`` pairs first, then the sorted ``*.tif`` files of ``raw/`` and ``gt/``
  folders, paired by sorted order.
- ``load_pairs``: reads and checks the pairs (same shape per pair, 2D or 3D, finite), normalizes each image on its
  own with its 2/99.9 percentiles, exactly as the seed's ``normalize``.
- ``resolve_patch_shape``: the requested patch (or the seed default), clipped to the smallest image.
- ``PatchSampler``: random patches with the seed's foreground rule (up to 512 tries) and ``rotate_and_flip``
  augmentation, from a seeded numpy Generator (no global RNG), so a run can be resumed exactly.

Imports numpy and tifffile only; must not import torch, ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scopert.errors import ConfigError, InputError

log = logging.getLogger(__name__)

MAX_SAMPLING_TRIES = 512
DEFAULT_PATCH_SHAPE = {3: (16, 256, 256), 2: (256, 256)}


@dataclass(frozen=True)
class ImagePair:
    raw: Path
    gt: Path


@dataclass
class PairData:
    """One loaded, normalized pair (float32 arrays of equal shape) and where it came from."""

    pair: ImagePair
    raw: np.ndarray
    gt: np.ndarray


def collect_pairs(data_dir: dict[str, str] | None, image_pairs: Sequence[dict[str, str]] | None,
                  label: str = "training") -> list[ImagePair]:
    """The pair list of 3D-RCAN's ``load_data``: explicit pairs, then the folders' sorted ``*.tif`` files."""
    pairs = [ImagePair(Path(p["raw"]), Path(p["gt"])) for p in (image_pairs or [])]
    if data_dir:
        raw_dir, gt_dir = Path(data_dir["raw"]), Path(data_dir["gt"])
        for d, name in ((raw_dir, "raw"), (gt_dir, "gt")):
            if not d.is_dir():
                raise InputError(
                    f"{label}_data_dir.{name} = {str(d)!r} is not a folder. Point it at a folder of *.tif files."
                )
        raw_files, gt_files = sorted(raw_dir.glob("*.tif")), sorted(gt_dir.glob("*.tif"))
        if not raw_files:
            raise InputError(f"no TIFF file (*.tif) found in {raw_dir}; put the {label} raw images there.")
        if len(raw_files) != len(gt_files):
            raise InputError(
                f"{raw_dir} holds {len(raw_files)} TIFF files but {gt_dir} holds {len(gt_files)}; raw and gt "
                "folders must contain the same number of *.tif files, paired in sorted name order."
            )
        pairs += [ImagePair(r, g) for r, g in zip(raw_files, gt_files)]
    return pairs


def percentile_normalize(image: np.ndarray, p_min: float = 2.0, p_max: float = 99.9) -> np.ndarray:
    """3D-RCAN's ``normalize``: (x - p2) / (p99.9 - p2 + 1e-6) over the whole image, float32, no clipping."""
    low, high = np.percentile(image, (p_min, p_max))
    return ((image - low) / (high - low + 1e-6)).astype(np.float32)


def read_tiff(path: Path) -> np.ndarray:
    """Read one TIFF, turning every failure into an InputError that names the file."""
    import tifffile

    if not path.is_file():
        raise InputError(f"image file {path} does not exist; check the path in the config.")
    try:
        return np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises many types for corrupt or truncated files
        raise InputError(f"cannot read {path} as a TIFF ({exc}); re-save it as a plain TIFF.") from None


def load_pairs(pairs: Sequence[ImagePair]) -> list[PairData]:
    """Read, check and normalize every pair; all images must have the same number of axes (2 or 3)."""
    loaded: list[PairData] = []
    for pair in pairs:
        log.info("loading raw %s / gt %s", pair.raw, pair.gt)
        raw, gt = read_tiff(pair.raw), read_tiff(pair.gt)
        if raw.shape != gt.shape:
            raise InputError(
                f"raw and gt images must have the same shape: {pair.raw} is {raw.shape} but {pair.gt} is "
                f"{gt.shape}. Check that the pairs match (folders are paired in sorted name order)."
            )
        if raw.ndim not in (2, 3):
            raise InputError(
                f"{pair.raw} has shape {raw.shape}; 3D-RCAN trains on single-channel YX (2D) or ZYX (3D) "
                "images. Split channels or time points into separate files."
            )
        for img, path in ((raw, pair.raw), (gt, pair.gt)):
            if not np.issubdtype(img.dtype, np.number) or np.issubdtype(img.dtype, np.complexfloating):
                raise InputError(f"{path} has dtype {img.dtype}; use integer or float images.")
            if not np.isfinite(img).all():
                raise InputError(f"{path} contains NaN or Inf values; fix or remove that image.")
        loaded.append(PairData(pair, percentile_normalize(raw), percentile_normalize(gt)))
    return loaded


def check_same_ndim(*groups: Sequence[PairData]) -> int:
    """The common number of axes of all images, or an InputError naming one file of each kind."""
    items = [p for group in groups for p in group]
    if not items:
        raise InputError("no training images were given; set training_data_dir or training_image_pairs.")
    by_ndim: dict[int, Path] = {}
    for p in items:
        by_ndim.setdefault(p.raw.ndim, p.pair.raw)
    if len(by_ndim) > 1:
        names = "; ".join(f"{nd}D: {path}" for nd, path in sorted(by_ndim.items()))
        raise InputError(
            f"all images must have the same number of dimensions, found {names}. Train 2D and 3D data separately."
        )
    return next(iter(by_ndim))


def resolve_patch_shape(requested: Sequence[int] | None, ndim: int,
                        image_shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """``input_shape`` (or the seed default) clipped element-wise to every image; warns when it clips."""
    if requested is not None and len(requested) != ndim:
        raise ConfigError(
            f"input_shape {list(requested)} has {len(requested)} values but the images are {ndim}D; "
            f"give {ndim} values ({'Z, Y, X' if ndim == 3 else 'Y, X'})."
        )
    wanted = tuple(int(s) for s in (requested if requested is not None else DEFAULT_PATCH_SHAPE[ndim]))
    shape = np.array(wanted)
    for s in image_shapes:
        shape = np.minimum(shape, s)
    patch = tuple(int(s) for s in shape)
    if patch != wanted:
        log.warning(
            "patch shape %s is larger than the smallest image; clipped to %s (the model input_shape).",
            list(wanted), list(patch),
        )
    return patch


def rotate_and_flip(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """3D-RCAN's augmentation, applied identically to x and y (needs a square YX patch).

    3D: rot90 by k in the YX plane, then p=.5 flip Y, then p=.5 flip Z. 2D: rot90 by k, then p=.5 flip X.
    """
    k = int(rng.integers(0, 4))
    if x.ndim == 3:
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
        if rng.random() < 0.5:
            x, y = np.flip(x, axis=1), np.flip(y, axis=1)
        if rng.random() < 0.5:
            x, y = np.flip(x, axis=0), np.flip(y, axis=0)
    elif x.ndim == 2:
        x, y = np.rot90(x, k), np.rot90(y, k)
        if rng.random() < 0.5:
            x, y = np.fliplr(x), np.fliplr(y)
    else:
        raise ValueError(f"rotate_and_flip needs 2D or 3D patches, got shape {x.shape}")
    return x, y


class PatchSampler:
    """Draws (raw, gt) patch batches the way 3D-RCAN's DataGenerator does, from its own seeded RNG.

    Per sample, up to 512 tries: a uniformly chosen image, a uniform top-left corner, the same crop of raw and gt;
    accepted when ``intensity_threshold <= 0`` or at least ``area_ratio_threshold * patch size`` voxels of the
    normalized gt patch exceed ``intensity_threshold``. When every try fails the last patch is kept (with a
    warning). Batches come out channels-first: (N, 1, *patch), float32.
    """

    def __init__(self, data: Sequence[PairData], patch_shape: Sequence[int], *, intensity_threshold: float,
                 area_ratio_threshold: float, augment: bool, seed: int | None = None) -> None:
        if not data:
            raise InputError("no image pairs to sample patches from.")
        self.data = list(data)
        self.patch_shape = tuple(int(s) for s in patch_shape)
        for p in self.data:
            if p.raw.ndim != len(self.patch_shape) or any(a < b for a, b in zip(p.raw.shape, self.patch_shape)):
                raise InputError(f"{p.pair.raw} (shape {p.raw.shape}) is smaller than the patch {self.patch_shape}.")
        if augment and self.patch_shape[-1] != self.patch_shape[-2]:
            raise ConfigError(
                f"rotate_and_flip augmentation needs a square YX patch, got {list(self.patch_shape)}. Make the last "
                "two input_shape values equal, or set data_augmentation to false."
            )
        self.intensity_threshold = float(intensity_threshold)
        self.area_threshold = float(area_ratio_threshold) * float(np.prod(self.patch_shape))
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.failed_samples = 0

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One (raw, gt) patch pair."""
        for _ in range(MAX_SAMPLING_TRIES):
            item = self.data[int(self.rng.integers(0, len(self.data)))]
            corner = [int(self.rng.integers(0, a - b + 1)) for a, b in zip(item.raw.shape, self.patch_shape)]
            roi = tuple(slice(c, c + s) for c, s in zip(corner, self.patch_shape))
            x, y = item.raw[roi], item.gt[roi]
            if self.intensity_threshold <= 0 or np.count_nonzero(y > self.intensity_threshold) >= self.area_threshold:
                break
        else:
            self.failed_samples += 1
            log.warning(
                "no patch passed the foreground rule in %d tries (intensity_threshold=%g, area_ratio_threshold=%g); "
                "keeping the last one. Lower the thresholds if this repeats.",
                MAX_SAMPLING_TRIES, self.intensity_threshold, self.area_threshold / np.prod(self.patch_shape),
            )
        if self.augment:
            x, y = rotate_and_flip(x, y, self.rng)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32)

    def next_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """A batch (N, 1, *patch) of raw and of gt patches."""
        xs, ys = zip(*(self.sample() for _ in range(batch_size)))
        return np.stack(xs)[:, None], np.stack(ys)[:, None]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
