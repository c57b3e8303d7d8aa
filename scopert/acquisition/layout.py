"""The shape of an acquisition's store, from the MDA sequence, the camera and the model's card, before a frame.

Raw: (t, c, z, y, x) as the sequence and the camera say, in the camera's dtype. Restored: the model's output
channels per acquired channel and its scale along z (3D models), y and x, as float32. Physical sizes: the core's
pixel size (micrometres), the z-plan's step (micrometres) and the time plan's interval (seconds), where stated.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from scopert.acquisition.store import AcquisitionStore, ImagePlan
from scopert.errors import ConfigError

log = logging.getLogger(__name__)


def sequence_sizes(sequence: Any) -> dict[str, int]:
    """t, p, c, z counts of a useq sequence (1 for an axis it does not iterate)."""
    sizes = {str(getattr(k, "value", k)): int(v) for k, v in dict(sequence.sizes).items()}
    return {a: max(1, sizes.get(a, 0)) for a in "tpcz"}


def physical_sizes(core: Any, sequence: Any) -> dict[str, tuple[float, str]]:
    """Sizes per axis as (value, unit) where the core or the sequence states them."""
    out: dict[str, tuple[float, str]] = {}
    pixel = float(core.getPixelSizeUm() or 0.0)
    if pixel > 0:
        out["y"] = out["x"] = (pixel, "micrometer")
    step = getattr(getattr(sequence, "z_plan", None), "step", None)
    if step:
        out["z"] = (float(step), "micrometer")
    interval = getattr(getattr(sequence, "time_plan", None), "interval", None)
    seconds = interval.total_seconds() if hasattr(interval, "total_seconds") else None
    if seconds:
        out["t"] = (float(seconds), "second")
    return out


def plan_store(core: Any, model: Any, sequence: Any, out: str | Path, *, ngff: str = "0.4",
               physical: dict[str, tuple[float, str]] | None = None) -> AcquisitionStore:
    """Create the store for ``sequence`` on ``core`` restored by ``model`` (see the module doc)."""
    sizes = sequence_sizes(sequence)
    if sizes["p"] > 1:
        raise ConfigError(f"the sequence visits {sizes['p']} stage positions; acquire writes one position per "
                          "store: run one sequence per position (or drop the stage_positions).")
    card = model.card
    height, width = int(core.getImageHeight()), int(core.getImageWidth())
    dtype = np.dtype({1: np.uint8, 2: np.uint16, 4: np.uint32}.get(int(core.getBytesPerPixel()), np.uint16))
    t, c, z = sizes["t"], sizes["c"], sizes["z"]
    scale = card.output.scale
    volume = "z" in card.input.axes

    def scaled(n: int, axis: str) -> int:
        return int(round(n * float(scale.get(axis, 1.0))))

    sizes_phys = dict(physical_sizes(core, sequence), **(physical or {}))
    raw_scale = {a: v for a, (v, _) in sizes_phys.items()}
    units = {a: u for a, (_, u) in sizes_phys.items()}
    out_scale = {a: v / float(scale.get(a, 1.0)) if (a in "yx" or (a == "z" and volume)) else v
                 for a, v in raw_scale.items()}
    channels = _channel_names(sequence, c)
    n_out = card.output.channels
    restored_names = [name + (f" {k}" if n_out > 1 else "") for name in channels for k in range(n_out)]
    raw = ImagePlan((t, c, z, height, width), dtype, raw_scale, units, channels)
    restored = ImagePlan((t, c * n_out, scaled(z, "z") if volume else z, scaled(height, "y"), scaled(width, "x")),
                         np.float32, out_scale, units, restored_names)
    attrs = {"scopert_model": Path(model.path).name, "scopert_family": card.family}
    return AcquisitionStore(out, raw, restored, attrs=attrs, ngff=ngff)


def _channel_names(sequence: Any, n: int) -> list[str]:
    names = [str(getattr(ch, "config", "") or f"channel {i}") for i, ch in enumerate(getattr(sequence, "channels",
                                                                                             ()) or ())]
    return names if len(names) == n else [f"channel {i}" for i in range(n)]
