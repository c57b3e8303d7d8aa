"""pytorch-3dunet's ``transformer:`` lists, as ScopeRT applies them (seeds.md 5.3).

The lists are split by what they do:

- normalization of the raw volume (``Normalize``: global min/max of the file to [-1, 1], clipped; ``Standardize``:
  global mean/std; ``PercentileNormalizer``), computed once per file, never per patch;
- label transforms applied once per file (``StandardLabelToBoundary``: voxels whose 6-neighbourhood holds another
  id, optionally Gaussian-blurred; ``BlobsToMask``: label > 0);
- augmentations drawn per patch from a numpy Generator: ``RandomFlip`` and ``RandomRotate90`` move raw, label and
  weight together; ``RandomContrast``, ``AdditiveGaussianNoise`` and ``AdditivePoissonNoise`` touch raw only.

Left out (logged once and skipped, so a seed config still runs): ``ElasticDeformation``, ``RandomRotate``,
``RandomITKDeformation``, ``GradualGaussianBlur``, ``CropToFixed``. ``ToTensor``/``Identity``/``Relabel`` need no
work here. Any other name is refused by name. Imports numpy and scipy only; must not import torch,
``scopert.export`` or ``scopert.runtime``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scopert.errors import ConfigError

log = logging.getLogger(__name__)

NORMALIZERS = ("Normalize", "Standardize", "PercentileNormalizer")
GEOMETRIC = ("RandomFlip", "RandomRotate90")
INTENSITY = ("RandomContrast", "AdditiveGaussianNoise", "AdditivePoissonNoise")
LABEL_MAKERS = ("StandardLabelToBoundary", "BlobsToMask")
NO_OP = ("ToTensor", "Identity", "Relabel")
LEFT_OUT = ("ElasticDeformation", "RandomRotate", "RandomITKDeformation", "GradualGaussianBlur", "CropToFixed")


@dataclass
class TransformPlan:
    """The transforms of one phase (train or val), split by kind."""

    normalizer: dict[str, Any] | None
    geometric: list[dict[str, Any]] = field(default_factory=list)
    intensity: list[dict[str, Any]] = field(default_factory=list)
    label_makers: list[dict[str, Any]] = field(default_factory=list)
    weight_geometric: bool = False
    skipped: list[str] = field(default_factory=list)


def plan_transforms(transformer: dict[str, list[dict[str, Any]]], where: str) -> TransformPlan:
    """Check the names of a ``transformer:`` section and sort them into a TransformPlan."""
    raw = transformer.get("raw", [])
    label = transformer.get("label", [])
    weight = transformer.get("weight", [])
    normalizer = None
    plan = TransformPlan(None)
    for key, steps in (("raw", raw), ("label", label), ("weight", weight)):
        for step in steps:
            name = step["name"]
            known = NORMALIZERS + GEOMETRIC + INTENSITY + LABEL_MAKERS + NO_OP + LEFT_OUT
            if name not in known:
                raise ConfigError(
                    f"{where}: transformer.{key}: {name!r} is not a transform ScopeRT knows. Supported: "
                    f"{', '.join(NORMALIZERS + GEOMETRIC + INTENSITY + LABEL_MAKERS + NO_OP)}; skipped with a "
                    f"warning: {', '.join(LEFT_OUT)}."
                )
            if name in LEFT_OUT:
                if name not in plan.skipped:
                    plan.skipped.append(name)
                continue
            if key == "raw":
                if name in NORMALIZERS:
                    normalizer = dict(step)
                elif name in GEOMETRIC:
                    plan.geometric.append(dict(step))
                elif name in INTENSITY:
                    plan.intensity.append(dict(step))
                elif name in LABEL_MAKERS:
                    raise ConfigError(f"{where}: transformer.raw: {name} is a label transform; move it to label:.")
            elif key == "label" and name in LABEL_MAKERS:
                plan.label_makers.append(dict(step))
            elif key == "weight" and name in GEOMETRIC:
                plan.weight_geometric = True
    plan.normalizer = normalizer
    if plan.skipped:
        log.warning("%s: augmentations not implemented in ScopeRT, skipped: %s", where, ", ".join(plan.skipped))
    return plan


# ---- once per file --------------------------------------------------------------------------------------------


def normalize_raw(raw: np.ndarray, spec: dict[str, Any] | None) -> np.ndarray:
    """The normalizer over the whole file (all channels together), as the seed's ``calculate_stats``."""
    x = raw.astype(np.float32)
    if spec is None:
        return x
    name = spec["name"]
    eps = float(spec.get("eps", 1e-10))
    if name == "Normalize":
        lo = float(spec.get("min_value", x.min()))
        hi = float(spec.get("max_value", x.max()))
        rng = hi - lo if hi > lo else 1.0
        return np.clip(2.0 * (x - lo) / rng - 1.0, -1.0, 1.0).astype(np.float32)
    if name == "Standardize":
        mean, std = float(spec.get("mean", x.mean())), float(spec.get("std", x.std()))
        return ((x - mean) / max(std, eps)).astype(np.float32)
    lo, hi = np.percentile(x, (float(spec.get("pmin", 1.0)), float(spec.get("pmax", 99.6))))
    return ((x - lo) / max(hi - lo, eps)).astype(np.float32)


def boundary_from_instances(label: np.ndarray) -> np.ndarray:
    """1 where a voxel's 6-neighbourhood (within the volume) holds a different id, else 0 (float32, DHW)."""
    lab = np.asarray(label)
    out = np.zeros(lab.shape, bool)
    for axis in range(lab.ndim):
        if lab.shape[axis] < 2:
            continue
        a = np.take(lab, np.arange(1, lab.shape[axis]), axis=axis)
        b = np.take(lab, np.arange(0, lab.shape[axis] - 1), axis=axis)
        diff = a != b
        lead = [slice(None)] * lab.ndim
        lead[axis] = slice(1, None)
        out[tuple(lead)] |= diff
        lead[axis] = slice(0, -1)
        out[tuple(lead)] |= diff
    return out.astype(np.float32)


def make_label(label: np.ndarray, makers: list[dict[str, Any]]) -> np.ndarray:
    """Apply the label makers in order to a (D, H, W) label volume; float32 result."""
    out = np.asarray(label)
    for step in makers:
        if step["name"] == "BlobsToMask":
            out = (out > 0).astype(np.float32)
        else:  # StandardLabelToBoundary
            out = boundary_from_instances(out)
            if step.get("blur"):
                from scipy.ndimage import gaussian_filter

                out = gaussian_filter(out, float(step.get("sigma", 1.0)))
                out = (out >= 0.5).astype(np.float32)
    return out.astype(np.float32) if out.dtype != np.float32 else out


# ---- per patch ------------------------------------------------------------------------------------------------


def augment(raw: np.ndarray, label: np.ndarray, weight: np.ndarray | None, plan: TransformPlan,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One random draw of the plan's augmentations on (C, D, H, W) patches; returns new arrays."""
    for step in plan.geometric:
        if step["name"] == "RandomFlip":
            for axis in (1, 2, 3):
                if raw.shape[axis] > 1 and rng.random() < float(step.get("axis_prob", 0.5)):
                    raw, label = np.flip(raw, axis), np.flip(label, axis)
                    if weight is not None:
                        weight = np.flip(weight, axis)
        else:  # RandomRotate90 in the (y, x) plane
            if raw.shape[2] != raw.shape[3]:
                continue
            k = int(rng.integers(0, 4))
            raw, label = np.rot90(raw, k, axes=(2, 3)), np.rot90(label, k, axes=(2, 3))
            if weight is not None:
                weight = np.rot90(weight, k, axes=(2, 3))
    raw = np.ascontiguousarray(raw, dtype=np.float32)
    for step in plan.intensity:
        if rng.random() >= float(step.get("execution_probability", 0.1)):
            continue
        name = step["name"]
        if name == "RandomContrast":
            lo, hi = step.get("alpha", (0.5, 1.5))
            mean = float(step.get("mean", 0.0))
            raw = np.clip(mean + float(rng.uniform(lo, hi)) * (raw - mean), -1.0, 1.0).astype(np.float32)
        elif name == "AdditiveGaussianNoise":
            lo, hi = step.get("scale", (0.0, 1.0))
            raw = raw + rng.normal(0.0, float(rng.uniform(lo, hi)), raw.shape).astype(np.float32)
        else:  # AdditivePoissonNoise
            lo, hi = step.get("lam", (0.0, 1.0))
            raw = raw + rng.poisson(float(rng.uniform(lo, hi)), raw.shape).astype(np.float32)
    label = np.ascontiguousarray(label, dtype=np.float32)
    if weight is not None:
        weight = np.ascontiguousarray(weight, dtype=np.float32)
    return raw, label, weight
