"""One comparator for every accuracy question the runtime and its tools ask: an engine's or a precision's output
against a reference (the bf16 and INT8 gates, ``doctor --gpu-check``, ``bench --compare``, apply's PSNR against
ground truth). PSNR is over the reference's value range unless a peak is given (3D-RCAN's metric on normalized
images uses peak 1); NaN/Inf are counted, never averaged in; segmentation outputs compare thresholded masks
(Dice). A leaf: numpy only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def psnr_db(reference: np.ndarray, test: np.ndarray, peak: float | None = None) -> float:
    """PSNR of ``test`` against ``reference`` (inf when identical); ``peak`` defaults to the reference's range."""
    reference = np.asarray(reference, np.float64)
    test = np.asarray(test, np.float64)
    mse = float(np.mean((reference - test) ** 2))
    if peak is None:
        peak = float(reference.max() - reference.min()) or 1.0
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


def dice_change(reference: np.ndarray, test: np.ndarray, threshold: float) -> float:
    """1 - Dice of the two masks ``> threshold`` (0 when both are empty)."""
    a, b = np.asarray(reference) > threshold, np.asarray(test) > threshold
    total = int(a.sum()) + int(b.sum())
    return 0.0 if total == 0 else 1.0 - 2.0 * int(np.logical_and(a, b).sum()) / total


@dataclass(frozen=True)
class Comparison:
    """``test`` against ``reference`` over the finite values of ``test``; NaN/Inf counted apart."""

    psnr_db: float
    max_abs: float
    max_rel: float
    nonfinite: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(reference: np.ndarray, test: np.ndarray) -> Comparison:
    """PSNR over the reference's range, max abs and max relative (to the range) error, and the NaN/Inf count."""
    reference, test = np.asarray(reference, np.float64), np.asarray(test)
    if reference.shape != test.shape:
        raise ValueError(f"outputs of shape {test.shape} and {reference.shape} cannot be compared")
    finite = np.isfinite(test)
    err = np.abs(test[finite].astype(np.float64) - reference[finite])
    span = float(reference.max() - reference.min()) or 1.0
    if not err.size:
        return Comparison(float("-inf"), float("inf"), float("inf"), int(np.sum(~finite)))
    mse = float(np.mean(err ** 2))
    psnr = float("inf") if mse == 0 else 10.0 * np.log10(span * span / mse)
    return Comparison(psnr, float(err.max()), float(err.max()) / span, int(np.sum(~finite)))
