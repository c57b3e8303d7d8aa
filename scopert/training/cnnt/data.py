"""CNNT training data as the seed reads it: HDF5 movies, scaling, and [T, H, W] patch sampling.

- ``load_h5_movies``: every top-level key of each HDF5 file must hold ``noisy_im`` and ``clean_im`` of equal
  shape [T, H, W] (a 2D [H, W] image counts as T = 1). A key that lacks one is named with what it holds.
- ``Scaling``: the seed's default ``clip((x - 0) / (65536 - 0), 0, 1)`` (``im_value_scale``), or with
  ``per_scaling`` the 1.5/99.5 percentiles of each array mapped to [0, 1] and clipped (noisy and clean apart).
- ``MoviePatchSampler``: for each sample, a movie uniformly at random; symmetric padding of T/H/W up to the
  cutout when the movie is smaller; random flips of H and of W (p = 0.5 each, the same for noisy and clean);
  a uniform random crop; the seed's foreground check (up to 10 tries, accept when
  ``count(clean > valu_thres) >= area_thres * numel``, else keep the try with the most foreground).
  Batches are [B, T, 1, H, W] float32. With several patch sizes each batch uses one size, drawn at random:
  the seed interleaves batches of one DataLoader per size at random. The numpy Generator state is saved for
  an exact resume; there is no global RNG.

Imports numpy and h5py only; must not import torch, ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from scopert.errors import ConfigError, InputError

log = logging.getLogger(__name__)

NOISY_KEY = "noisy_im"
CLEAN_KEY = "clean_im"
FOREGROUND_TRIES = 10


@dataclass(frozen=True)
class Scaling:
    """How raw values become [0, 1]: fixed ``(x - lo) / (hi - lo)`` or per-array percentiles; always clipped."""

    im_value_scale: tuple[float, float] = (0.0, 65536.0)
    per_scaling: bool = False
    percentiles: tuple[float, float] = (1.5, 99.5)

    def apply(self, array: np.ndarray) -> np.ndarray:
        a = np.asarray(array, dtype=np.float32)
        if self.per_scaling:
            lo, hi = (float(v) for v in np.percentile(a, self.percentiles))
        else:
            lo, hi = (float(v) for v in self.im_value_scale)
        span = hi - lo if hi > lo else 1.0
        return np.clip((a - lo) / span, 0.0, 1.0).astype(np.float32)


@dataclass
class Movie:
    """One HDF5 key: scaled noisy and clean stacks, [T, H, W] float32 each."""

    source: str  # "file.h5:key"
    noisy: np.ndarray
    clean: np.ndarray


def _read_key(fh: Any, key: str, path: Path, scaling: Scaling) -> Movie:
    group = fh[key]
    where = f"{path.name}:{key}"
    present = sorted(group.keys()) if hasattr(group, "keys") else []
    missing = [k for k in (NOISY_KEY, CLEAN_KEY) if k not in present]
    if missing:
        raise InputError(
            f"{where} has no {' and no '.join(repr(m) for m in missing)} dataset (it holds "
            f"{present or 'no datasets'}). CNNT training needs '<key>/{NOISY_KEY}' and '<key>/{CLEAN_KEY}', each "
            "[T, H, W]; rename the datasets or drop this key from the file."
        )
    noisy, clean = np.asarray(group[NOISY_KEY]), np.asarray(group[CLEAN_KEY])
    for name, arr in ((NOISY_KEY, noisy), (CLEAN_KEY, clean)):
        if arr.ndim not in (2, 3):
            raise InputError(f"{where}/{name} has shape {arr.shape}; CNNT needs [T, H, W] (or [H, W]).")
        if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            raise InputError(f"{where}/{name} holds non-numeric, NaN or Inf values; clean the data first.")
    if noisy.shape != clean.shape:
        raise InputError(
            f"{where}: {NOISY_KEY} has shape {noisy.shape} but {CLEAN_KEY} has {clean.shape}; they must match."
        )
    if noisy.ndim == 2:
        noisy, clean = noisy[None], clean[None]
    return Movie(where, scaling.apply(noisy), scaling.apply(clean))


def load_h5_movies(paths: Sequence[str | os.PathLike], scaling: Scaling, label: str = "training") -> list[Movie]:
    """Read every key of every file (sorted key order), checking the seed's layout."""
    import h5py

    movies: list[Movie] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InputError(f"{label} file {path} does not exist; check the path in the config.")
        try:
            fh = h5py.File(path, "r")
        except OSError as exc:
            raise InputError(f"{path} is not a readable HDF5 file ({exc}); pass the seed's .h5 data.") from None
        with fh:
            keys = sorted(fh.keys())
            if not keys:
                raise InputError(f"{path} holds no keys; CNNT needs '<key>/{NOISY_KEY}' and '<key>/{CLEAN_KEY}'.")
            movies += [_read_key(fh, k, path, scaling) for k in keys]
    return movies


def split_movies(movies: list[Movie], ratio: Sequence[float], seed: int) -> tuple[list[Movie], list[Movie]]:
    """The seed's random split of keys by ``ratio`` (train, val[, test] percentages); test keys are unused."""
    order = np.random.default_rng(seed).permutation(len(movies))
    n_train = int(len(movies) * float(ratio[0]) / 100.0)
    n_val = int(len(movies) * float(ratio[1]) / 100.0) if len(ratio) > 1 else 0
    n_train = max(1, n_train)
    train = [movies[i] for i in order[:n_train]]
    val = [movies[i] for i in order[n_train : n_train + n_val]]
    return train, val


def symmetric_pad_to(noisy: np.ndarray, clean: np.ndarray, cutout: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad [T, H, W] symmetrically (mirror including the edge) on the high side up to ``cutout`` where smaller."""
    # 'symmetric' cannot pad by more than the current length in one call; repeat until large enough.
    while any(n < c for n, c in zip(noisy.shape, cutout)):
        step = [(0, min(n, max(0, c - n))) for c, n in zip(cutout, noisy.shape)]
        noisy, clean = np.pad(noisy, step, mode="symmetric"), np.pad(clean, step, mode="symmetric")
    return noisy, clean


class MoviePatchSampler:
    """Random [T, H, W] patches from movies (see the module docstring); a BatchSource for the Trainer."""

    def __init__(self, movies: Sequence[Movie], cutouts: Sequence[Sequence[int]], *, seed: int,
                 valu_thres: float = 0.002, area_thres: float = 0.25, augment: bool = True) -> None:
        if not movies:
            raise InputError("no training movies were loaded; give at least one HDF5 key.")
        if not cutouts:
            raise ConfigError("no patch size given; set height and width (lists of equal length).")
        self.movies = list(movies)
        self.cutouts = [tuple(int(v) for v in c) for c in cutouts]
        self.valu_thres, self.area_thres, self.augment = float(valu_thres), float(area_thres), augment
        self.rng = np.random.default_rng(seed)

    def sample(self, cutout: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        movie = self.movies[int(self.rng.integers(len(self.movies)))]
        noisy, clean = symmetric_pad_to(movie.noisy, movie.clean, cutout)
        if self.augment:
            if self.rng.random() < 0.5:
                noisy, clean = noisy[:, ::-1], clean[:, ::-1]
            if self.rng.random() < 0.5:
                noisy, clean = noisy[:, :, ::-1], clean[:, :, ::-1]
        best, best_count = None, -1
        need = self.area_thres * float(np.prod(cutout))
        for _ in range(FOREGROUND_TRIES):
            starts = [int(self.rng.integers(0, n - c + 1)) for n, c in zip(noisy.shape, cutout)]
            sl = tuple(slice(s, s + c) for s, c in zip(starts, cutout))
            count = int(np.count_nonzero(clean[sl] > self.valu_thres))
            if count > best_count:
                best, best_count = sl, count
            if count >= need:
                break
        assert best is not None
        return np.ascontiguousarray(noisy[best]), np.ascontiguousarray(clean[best])

    def next_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        cutout = self.cutouts[int(self.rng.integers(len(self.cutouts)))]
        pairs = [self.sample(cutout) for _ in range(batch_size)]
        x = np.stack([p[0] for p in pairs])[:, :, None]
        y = np.stack([p[1] for p in pairs])[:, :, None]
        return x, y

    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


def validation_batches(movies: Sequence[Movie], cutouts: Sequence[Sequence[int]], *, seed: int, n_batches: int,
                       batch_size: int, valu_thres: float, area_thres: float) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The same random patches every epoch (fixed seed, no flips), cycling through the patch sizes so that the
    mean loss averages the sizes as the seed's (val_loss + val_loss_larger) / 2 does."""
    sampler = MoviePatchSampler(movies, cutouts, seed=seed, valu_thres=valu_thres, area_thres=area_thres,
                                augment=False)
    for i in range(n_batches):
        cutout = sampler.cutouts[i % len(sampler.cutouts)]
        pairs = [sampler.sample(cutout) for _ in range(batch_size)]
        yield np.stack([p[0] for p in pairs])[:, :, None], np.stack([p[1] for p in pairs])[:, :, None]
