"""HDF5 training data for the ``unet`` family, as pytorch-3dunet reads it (seeds.md 5.3).

- ``load_volume``: one HDF5 file with ``raw`` (DHW or CDHW), ``label`` and an optional ``weight`` (internal paths
  from the config); the spatial shapes must agree (the error names both shapes and the file). The raw volume is
  normalized once per file, and the label makers run once per file.
- ``slice_grid``: the seed's SliceBuilder grid per axis, ``range(0, I - k + 1, s)`` plus a final ``I - k``.
- ``UNetPatchSource``: the training BatchSource. ``SliceBuilder`` walks the grid in a shuffled order (reshuffled
  each pass), ``FilterSliceBuilder`` keeps patches with enough foreground, ``PixelWiseWeightedSliceBuilder`` draws
  centres with probability proportional to the weight map. Augmentation per patch; a seeded numpy Generator
  (state saved with the run) makes resumes exact.
- ``validation_batches``: every grid patch of the validation files, in order, without augmentation.

Imports numpy and h5py only; must not import torch, ``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from scopert.errors import ConfigError, InputError
from scopert.training.unet.config import PhaseConfig
from scopert.training.unet.transforms import TransformPlan, augment, make_label, normalize_raw, plan_transforms

log = logging.getLogger(__name__)

Slices = tuple[slice, slice, slice]
UNetBatch = tuple[np.ndarray, np.ndarray, np.ndarray | None]
SLICE_BUILDERS = ("SliceBuilder", "FilterSliceBuilder", "PixelWiseWeightedSliceBuilder")


@dataclass
class UNetVolume:
    """One loaded file: raw (C, D, H, W) normalized float32, label (Cl, D, H, W) float32, weight or None."""

    path: Path
    raw: np.ndarray
    label: np.ndarray
    weight: np.ndarray | None

    @property
    def spatial(self) -> tuple[int, int, int]:
        return tuple(self.raw.shape[1:])  # type: ignore[return-value]


def _read(f: Any, key: str | None, path: Path, what: str, required: bool) -> np.ndarray | None:
    if key is None:
        return None
    if key not in f:
        if not required:
            return None
        raise InputError(f"{path} has no dataset {key!r} (the {what}); it holds {', '.join(sorted(f.keys()))}. "
                         f"Set loaders.{what}_internal_path to the right name, or add the dataset.")
    return np.asarray(f[key][...])


def _channels_first(a: np.ndarray, path: Path, what: str) -> np.ndarray:
    if a.ndim == 3:
        return a[None]
    if a.ndim == 4:
        return a
    raise InputError(f"{path}: the {what} dataset has shape {a.shape}; pytorch-3dunet takes DHW or CDHW "
                     "(a 2D image is stored as (1, H, W)).")


def load_volume(path: str | Path, phase: PhaseConfig, plan: TransformPlan) -> UNetVolume:
    """Read, check, normalize and make labels for one HDF5 file."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path} is not a readable HDF5 file ({exc}); check the path in loaders.file_paths.") from None
    with f:
        raw = _read(f, phase.raw_internal_path, path, "raw", True)
        label = _read(f, phase.label_internal_path, path, "label", True)
        weight = _read(f, phase.weight_internal_path, path, "weight", phase.weight_internal_path is not None)
    assert raw is not None and label is not None
    raw = _channels_first(raw, path, "raw")
    if not np.all(np.isfinite(raw)):
        raise InputError(f"{path}: the raw dataset holds NaN or Inf values; clean the file before training.")
    label = _channels_first(label, path, "label")
    if label.shape[1:] != raw.shape[1:]:
        raise InputError(
            f"{path}: the label volume has shape {tuple(label.shape[-3:])} but the raw volume has shape "
            f"{tuple(raw.shape[-3:])} (raw dataset {phase.raw_internal_path!r} {tuple(raw.shape)}, label dataset "
            f"{phase.label_internal_path!r} {tuple(label.shape)}). Every label must cover its raw volume voxel for "
            "voxel; crop or re-export one of them."
        )
    if weight is not None:
        weight = _channels_first(weight, path, "weight").astype(np.float32)
        if weight.shape[1:] != raw.shape[1:]:
            raise InputError(f"{path}: the weight volume has shape {tuple(weight.shape[-3:])} but the raw volume "
                             f"has shape {tuple(raw.shape[-3:])}; they must match.")
    if plan.label_makers:
        label = np.stack([make_label(ch, plan.label_makers) for ch in label])
    return UNetVolume(path, normalize_raw(raw, plan.normalizer), label.astype(np.float32), weight)


def load_phase(phase: PhaseConfig, where: str) -> tuple[list[UNetVolume], TransformPlan]:
    plan = plan_transforms(phase.transformer, where)
    return [load_volume(p, phase, plan) for p in phase.file_paths], plan


def slice_grid(shape: Sequence[int], patch: Sequence[int], stride: Sequence[int], path: Path | str = "") -> list[Slices]:
    """The seed's patch grid over a (D, H, W) volume; a patch larger than the volume is an InputError."""
    per_axis = []
    for axis, (n, k, s) in enumerate(zip(shape, patch, stride)):
        if n < k:
            raise InputError(
                f"{path}: the volume has shape {tuple(shape)}, smaller than the patch {tuple(patch)} along axis "
                f"{axis}. Use a smaller slice_builder.patch_shape (at most the volume) or a bigger volume."
            )
        starts = list(range(0, n - k + 1, s))
        if starts[-1] + k < n:
            starts.append(n - k)
        per_axis.append([slice(a, a + k) for a in starts])
    return [(z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]]


def _take(vol: UNetVolume, idx: Slices) -> UNetBatch:
    key = (slice(None),) + idx
    return vol.raw[key], vol.label[key], None if vol.weight is None else vol.weight[key]


class UNetPatchSource:
    """Training patches (see the module docstring); implements the Trainer's BatchSource protocol."""

    def __init__(self, volumes: list[UNetVolume], slice_builder: dict[str, Any], plan: TransformPlan,
                 seed: int) -> None:
        self.volumes = volumes
        self.plan = plan
        self.kind = slice_builder.get("name", "SliceBuilder")
        if self.kind not in SLICE_BUILDERS:
            raise ConfigError(f"slice_builder.name {self.kind!r} is not supported; use one of {', '.join(SLICE_BUILDERS)}.")
        self.patch = tuple(slice_builder["patch_shape"])
        stride = tuple(slice_builder["stride_shape"])
        if self.kind == "PixelWiseWeightedSliceBuilder" and any(v.weight is None for v in volumes):
            raise ConfigError("PixelWiseWeightedSliceBuilder draws patch centres from the weight map; set "
                              "loaders.weight_internal_path and give every file a weight dataset.")
        self.index: list[tuple[int, Slices]] = []
        for i, vol in enumerate(volumes):
            for idx in slice_grid(vol.spatial, self.patch, stride, vol.path):
                if self.kind == "FilterSliceBuilder" and not self._keep(vol, idx, slice_builder, i):
                    continue
                self.index.append((i, idx))
        if not self.index:
            raise InputError("no training patch is left after FilterSliceBuilder; lower slice_builder.threshold.")
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []
        self.pos = 0

    @staticmethod
    def _keep(vol: UNetVolume, idx: Slices, sb: dict[str, Any], i: int) -> bool:
        label = vol.label[(slice(None),) + idx]
        frac = np.count_nonzero(label) / label.size
        # deterministic slack acceptance, seeded by the patch position
        slack = np.random.default_rng([i] + [s.start for s in idx]).random() < float(sb.get("slack_acceptance", 0.01))
        return frac > float(sb.get("threshold", 0.6)) or slack

    @property
    def patches_per_pass(self) -> int:
        return len(self.index)

    def _next_index(self) -> tuple[int, Slices]:
        if self.kind == "PixelWiseWeightedSliceBuilder":
            return self._weighted_index()
        if self.pos >= len(self.order):
            self.order = [int(k) for k in self.rng.permutation(len(self.index))]
            self.pos = 0
        k = self.order[self.pos]
        self.pos += 1
        return self.index[k]

    def _weighted_index(self) -> tuple[int, Slices]:
        i = int(self.rng.integers(len(self.volumes)))
        vol = self.volumes[i]
        w = vol.weight.sum(axis=0).ravel()  # type: ignore[union-attr]
        total = float(w.sum())
        flat = int(self.rng.choice(w.size, p=w / total)) if total > 0 else int(self.rng.integers(w.size))
        centre = np.unravel_index(flat, vol.spatial)
        starts = [min(max(c - k // 2, 0), n - k) for c, k, n in zip(centre, self.patch, vol.spatial)]
        return i, tuple(slice(a, a + k) for a, k in zip(starts, self.patch))  # type: ignore[return-value]

    def next_batch(self, batch_size: int) -> UNetBatch:
        xs, ys, ws = [], [], []
        for _ in range(batch_size):
            i, idx = self._next_index()
            raw, label, weight = augment(*_take(self.volumes[i], idx), self.plan, self.rng)
            xs.append(raw)
            ys.append(label)
            ws.append(weight)
        w = None if ws[0] is None else np.stack(ws)
        return np.stack(xs), np.stack(ys), w

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "order": list(self.order), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = list(state.get("order", []))
        self.pos = int(state.get("pos", 0))


def validation_batches(volumes: list[UNetVolume], slice_builder: dict[str, Any], batch_size: int):
    """A callable yielding every validation grid patch, in order, ``batch_size`` at a time."""
    patch, stride = slice_builder["patch_shape"], slice_builder["stride_shape"]
    index = [(vol, idx) for vol in volumes for idx in slice_grid(vol.spatial, patch, stride, vol.path)]

    def batches() -> Iterator[UNetBatch]:
        for start in range(0, len(index), batch_size):
            items = [_take(vol, idx) for vol, idx in index[start:start + batch_size]]
            w = None if items[0][2] is None else np.stack([it[2] for it in items])
            yield np.stack([it[0] for it in items]), np.stack([it[1] for it in items]), w

    return batches
