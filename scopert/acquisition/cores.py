"""The core an acquisition runs on: the user's Micro-Manager configuration, or a replay camera for a rehearsal.

``CameraSpec`` says which (``scopert acquire --mm-config`` / ``--camera replay:``, the napari live widget);
``make_core`` loads it, so every way in opens a microscope the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scopert.acquisition.replay import keep_root_log_level, replay_core
from scopert.errors import ConfigError, InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraSpec:
    kind: str  # "replay" or "mm-config"
    path: Path
    fps: float | None = None  # replay only: frames per second (None: as fast as the MDA asks)


def read_camera_frames(path: Path) -> tuple[np.ndarray, float | None]:
    """The planes of a recording (n, y, x) in file order and its pixel size in micrometres, if stated."""
    from scopert.runtime.io import read_image

    with read_image(path) as image:
        if image.array.ndim not in (2, 3) or "c" in (image.axes or ""):
            raise InputError(f"--camera replay:{path} has axes {image.axes!r} (shape {image.shape}); a replay camera "
                             "plays single-channel planes: give a (t, y, x) or (z, y, x) stack.")
        frames = np.array(image.array)  # in memory: disk reads must not distort the camera's pace
        pixel = image.physical.get("x", "micrometer") if image.physical and image.physical.get("x") else None
    return (frames[None] if frames.ndim == 2 else frames), pixel


def make_core(spec: CameraSpec) -> Any:
    """A ``UniMMCore`` with a replay camera, or a ``CMMCorePlus`` with the configuration loaded."""
    if spec.kind == "replay":
        frames, pixel = read_camera_frames(spec.path)
        return replay_core(frames, spec.fps, pixel_size_um=pixel)
    try:
        with keep_root_log_level():
            from pymmcore_plus import CMMCorePlus

            core = CMMCorePlus()
    except ImportError as e:
        raise ConfigError("--mm-config needs pymmcore-plus; pip install 'scopert[microscope]'") from e
    try:
        core.loadSystemConfiguration(str(spec.path))
    except Exception as e:  # noqa: BLE001 - Micro-Manager's errors name the device that failed
        raise InputError(f"--mm-config {spec.path} did not load ({str(e).strip().splitlines()[0][:300]}); check "
                         "that Micro-Manager's device adapters are installed (mmcore install) and the "
                         "configuration opens in Micro-Manager.") from None
    return core
