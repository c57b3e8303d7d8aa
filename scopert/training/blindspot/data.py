"""Noisy-frame training data for the blind-spot (SHINE) family: reading frames, windows, augmentation.

- ``load_frames``: a folder of single 2D frames (sorted by name; TIFF, and MRC when ``mrcfile`` is importable), or one
  stack file (TIFF (N, Y, X) / MRC), or a list of such paths, as float32 (N, Y, X). Checked: 2D frames of one shape,
  finite, numeric, and at least ``frame_num`` of them.
- ``window_indices``: the seed's ``idxreturn``: ``[i-half .. i+half]``, mirrored at both ends of the sequence.
- ``zscore_frames``: per-frame z-score with the unbiased std (the seed's ``torch_zscore_normalize``).
- ``FrameSampler``: self-supervised batches as SHINE's ``Dataloader_plain`` builds them: a random window, a random
  nearest resize (shorter side ~ U[lo, hi)), a random crop, h/v flips, per-frame z-score, added Gaussian noise with
  sigma ~ U(0.25, 0.75) (one per sample), z-score again. The target is the (noise-added) centre frame, so no clean
  image is needed. A seeded numpy Generator (no global RNG) makes resume exact.
- ``validation_items``: fixed five-crop windows of held-out frames, z-scored, without added noise.

Imports numpy and tifffile (mrcfile optionally); must not import torch, ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scopert.errors import ConfigError, InputError

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
MRC_SUFFIXES = (".mrc", ".mrcs", ".st", ".map")
NOISE_SIGMA = (0.25, 0.75)


def _mrcfile_available() -> bool:
    try:
        import mrcfile  # noqa: F401
    except ImportError:
        return False
    return True


def _read_one(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile

        try:
            return np.asarray(tifffile.imread(path))
        except Exception as exc:  # tifffile raises many types for corrupt or truncated files
            raise InputError(f"cannot read {path} as a TIFF ({exc}); re-save it as a plain TIFF.") from None
    if suffix in MRC_SUFFIXES:
        if not _mrcfile_available():
            raise InputError(f"{path} is an MRC file, but the mrcfile package is not installed. "
                             "Install it (pip install mrcfile) or convert the frames to TIFF.")
        import mrcfile

        try:
            with mrcfile.open(path, permissive=True) as mrc:
                return np.asarray(mrc.data).copy()
        except Exception as exc:
            raise InputError(f"cannot read {path} as an MRC file ({exc}).") from None
    raise InputError(f"{path} is not a TIFF or MRC file; give .tif/.tiff frames (or .mrc with mrcfile installed).")


def frame_files(folder: Path) -> list[Path]:
    """The frame files of a folder, sorted by name (the seed's frame order)."""
    suffixes = TIFF_SUFFIXES + (MRC_SUFFIXES if _mrcfile_available() else ())
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def load_frames(source: str | Path | Sequence[str | Path], frame_num: int = 1) -> np.ndarray:
    """Read noisy frames as float32 (N, Y, X) from a folder, a stack file, or a list of paths (see module doc)."""
    paths: list[Path] = []
    for item in ([source] if isinstance(source, (str, Path)) else list(source)):
        p = Path(item)
        if p.is_dir():
            found = frame_files(p)
            if not found:
                raise InputError(f"no frame files (*.tif, *.tiff{', *.mrc' if _mrcfile_available() else ''}) "
                                 f"found in {p}; put the noisy frames there, one file per frame or one stack.")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise InputError(f"training data {str(p)!r} does not exist; give a folder of frames or a stack file.")
    if not paths:
        raise InputError("no training data was given; set data_path to a folder of frames or a stack file.")
    frames: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    for p in paths:
        a = _read_one(p)
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise InputError(f"{p} has dtype {a.dtype}; use integer or float frames.")
        a = np.squeeze(a)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise InputError(f"{p} has shape {a.shape}; give 2D frames (Y, X) or a stack of them (N, Y, X).")
        if shape is None:
            shape = a.shape[1:]
        elif a.shape[1:] != shape:
            raise InputError(f"{p} has frames of {a.shape[1:]}, but earlier frames are {shape}; all frames of one "
                             "training set must have the same size.")
        if not np.isfinite(a).all():
            raise InputError(f"{p} contains NaN or Inf values; fix or remove that file.")
        frames.append(a.astype(np.float32))
    stack = np.concatenate(frames)
    if stack.shape[0] < frame_num:
        raise InputError(f"the training data has {stack.shape[0]} frames, fewer than frame_num = {frame_num}. "
                         f"Give at least {frame_num} frames, or lower frame_num.")
    log.info("loaded %d frames of %s from %d file(s)", stack.shape[0], list(stack.shape[1:]), len(paths))
    return stack


def window_indices(i: int, n: int, frame_num: int) -> list[int]:
    """The seed's ``idxreturn``: frames ``i-half .. i+half``, mirrored at the ends (``i<half`` -> ``i+|k|``)."""
    if n < frame_num:
        raise InputError(f"{n} frames are fewer than the window of {frame_num}; give at least {frame_num}.")
    half = frame_num // 2
    out = []
    for k in range(-half, frame_num - half):
        if i < half:
            out.append(i + abs(k))
        elif i > n - half - 1:
            out.append(i - abs(k))
        else:
            out.append(i + k)
    return out


def zscore_frames(x: np.ndarray) -> np.ndarray:
    """Per-frame z-score over (Y, X) of a (T, Y, X) array, unbiased std (torch's default), float32."""
    x = x.astype(np.float32, copy=False)
    mean = x.mean(axis=(-2, -1), keepdims=True)
    std = x.std(axis=(-2, -1), ddof=1, keepdims=True)
    return ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def resize_nearest(x: np.ndarray, size: int) -> np.ndarray:
    """torchvision ``resize(x, [size], NEAREST)`` of (T, Y, X): the shorter side becomes ``size``, aspect kept."""
    h, w = x.shape[-2:]
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    rows = np.minimum((np.arange(new_h) * (h / new_h)).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(new_w) * (w / new_w)).astype(np.int64), w - 1)
    return x[:, rows][:, :, cols]


@dataclass
class FrameAugment:
    """The seed's training transform; ``resize`` = (lo, hi) of the shorter side drawn from [lo, hi), or None."""

    img_size: int
    resize: tuple[int, int] | None = (256, 512)
    flips: bool = True
    add_noise: bool = True


class FrameSampler:
    """Self-supervised (input window, noisy centre target) batches; see the module docstring."""

    def __init__(self, frames: np.ndarray, frame_num: int, augment: FrameAugment, centres: Sequence[int] | None = None,
                 seed: int | None = None) -> None:
        self.frames = frames
        self.frame_num = int(frame_num)
        self.augment = augment
        self.centres = list(range(frames.shape[0]) if centres is None else centres)
        if not self.centres:
            raise InputError("no training frames are left after holding out the validation frames; give more frames "
                             "or set val_frames to 0.")
        h, w = frames.shape[-2:]
        smallest = min(h, w) if augment.resize is None else augment.resize[0]
        if augment.img_size > smallest:
            raise ConfigError(
                f"img_size {augment.img_size} is larger than the frames allow ({h}x{w}"
                f"{'' if augment.resize is None else f', resized to a shorter side >= {augment.resize[0]}'}); "
                f"use img_size <= {smallest}."
            )
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One (frame_num, s, s) input and its (1, s, s) target."""
        a, rng = self.augment, self.rng
        i = self.centres[int(rng.integers(0, len(self.centres)))]
        x = self.frames[window_indices(i, self.frames.shape[0], self.frame_num)]
        if a.resize is not None:
            x = resize_nearest(x, int(rng.integers(a.resize[0], a.resize[1])))
        h, w = x.shape[-2:]
        top, left = int(rng.integers(0, h - a.img_size + 1)), int(rng.integers(0, w - a.img_size + 1))
        x = x[:, top:top + a.img_size, left:left + a.img_size]
        if a.flips:
            if rng.random() < 0.5:
                x = x[:, :, ::-1]
            if rng.random() < 0.5:
                x = x[:, ::-1, :]
        x = zscore_frames(np.ascontiguousarray(x))
        if a.add_noise:
            sigma = rng.uniform(*NOISE_SIGMA)
            x = zscore_frames(x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32))
        c = self.frame_num // 2
        return x, x[c:c + 1].copy()

    def next_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = zip(*(self.sample() for _ in range(batch_size)))
        return np.stack(xs), np.stack(ys)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


def five_crops(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of torchvision's FiveCrop: the four corners and the centre."""
    return [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2)]


def validation_items(frames: np.ndarray, frame_num: int, centres: Sequence[int], img_size: int
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fixed validation (input, target) pairs: five crops of each held-out window, z-scored, no added noise."""
    n, h, w = frames.shape
    size = min(img_size, h, w)
    items = []
    for i in centres:
        window = frames[window_indices(i, n, frame_num)]
        for top, left in five_crops(h, w, size):
            x = zscore_frames(window[:, top:top + size, left:left + size])
            c = frame_num // 2
            items.append((x, x[c:c + 1].copy()))
    return items
