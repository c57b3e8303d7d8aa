"""A pure-Python camera that plays a real recording at a set frame rate, and a core that holds it.

Micro-Manager's C++ device adapters are not on the package index, so rehearsals and tests use pymmcore-plus's
``UniMMCore`` with Python devices: ``ReplayCamera`` (frames of a file, in order, looping) and a focus stage that
only records its position (a z-plan then runs without warnings). ``snap`` waits until frame ``i`` is due
(``start + i / fps``), so the MDA runs at the recording's pace, not faster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from scopert.errors import ConfigError, InputError

log = logging.getLogger(__name__)


@contextmanager
def keep_root_log_level() -> Iterator[None]:
    """Importing pymmcore-plus sets the root logger to DEBUG (every library's debug lines then print):
    put the caller's level back."""
    root = logging.getLogger()
    level = root.level
    try:
        yield
    finally:
        root.setLevel(level)


def _pymmcore() -> Any:
    try:
        with keep_root_log_level():
            from pymmcore_plus.experimental import unicore
    except ImportError as e:
        raise ConfigError("acquisition needs pymmcore-plus, which is not installed; pip install "
                          "'scopert[microscope]'") from e
    return unicore


def read_sequence(path: str | Path) -> Any:
    """A ``useq.MDASequence`` from a useq-schema YAML or JSON file, or one line naming what is wrong."""
    try:
        import useq
    except ImportError as e:
        raise ConfigError("acquisition needs useq-schema, which is not installed; pip install "
                          "'scopert[microscope]'") from e
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--sequence {path} does not exist; give a useq-schema .yaml or .json file.")
    try:
        return useq.MDASequence.from_file(path)
    except Exception as e:  # noqa: BLE001 - pydantic's, yaml's and json's errors all mean: not a sequence
        first = str(e).strip().splitlines()
        raise InputError(f"--sequence {path} is not a useq-schema MDA sequence ({type(e).__name__}: "
                         f"{' '.join(first[:3])[:300]}); see https://pymmcore-plus.github.io/useq-schema/") from None


def _camera_class() -> type:
    unicore = _pymmcore()

    class ReplayCamera(unicore.SimpleCameraDevice):
        """Plays ``frames`` (n, y, x) in order, looping, at ``fps`` frames per second (None: as fast as asked)."""

        def __init__(self, frames: np.ndarray, fps: float | None = None) -> None:
            super().__init__()
            if frames.ndim != 3:
                raise InputError(f"a replay camera plays a stack of 2D frames (n, y, x); got shape {frames.shape}")
            self.frames, self.fps = frames, fps
            self.count = 0
            self._start: float | None = None
            self._exposure = 1.0

        def sensor_shape(self) -> tuple[int, int]:
            return tuple(self.frames.shape[1:])

        def dtype(self) -> Any:
            return self.frames.dtype

        def get_exposure(self) -> float:
            return self._exposure

        def set_exposure(self, exposure: float) -> None:
            self._exposure = float(exposure)

        def snap(self, buffer: np.ndarray) -> dict[str, Any]:
            if self.fps:
                now = time.perf_counter()
                if self._start is None:
                    self._start = now
                due = self._start + self.count / self.fps
                if due > now:
                    time.sleep(due - now)
            i = self.count % len(self.frames)
            buffer[:] = self.frames[i]
            self.count += 1
            return {"replay_frame": i}

    return ReplayCamera


def _stage_class() -> type:
    unicore = _pymmcore()

    class ReplayFocus(unicore.StageDevice):
        """A focus drive that only remembers where it was sent."""

        def __init__(self) -> None:
            super().__init__()
            self._z = 0.0

        def set_position_um(self, val: float) -> None:
            self._z = float(val)

        def get_position_um(self) -> float:
            return self._z

        def home(self) -> None:
            self._z = 0.0

        def stop(self) -> None:
            pass

        def set_origin(self) -> None:
            self._z = 0.0

    return ReplayFocus


def ReplayCamera(frames: np.ndarray, fps: float | None = None) -> Any:  # noqa: N802 - a class made on first use
    """A ``SimpleCameraDevice`` that plays ``frames``; pymmcore-plus is imported only when one is made."""
    return _camera_class()(frames, fps)


def replay_core(frames: np.ndarray, fps: float | None = None, pixel_size_um: float | None = None) -> Any:
    """A ``UniMMCore`` with a replay camera ("Camera") and a focus stage ("Z"), ready for ``core.mda.run``."""
    unicore = _pymmcore()
    with keep_root_log_level():
        core = unicore.UniMMCore()
    core.loadPyDevice("Camera", ReplayCamera(np.asarray(frames), fps))
    core.initializeDevice("Camera")
    core.setCameraDevice("Camera")
    core.loadPyDevice("Z", _stage_class()())
    core.initializeDevice("Z")
    core.setFocusDevice("Z")
    core.setAutoShutter(False)  # no shutter device: per-event runs would fail on setShutterOpen
    if pixel_size_um:
        core.definePixelSizeConfig("replay")
        core.setPixelSizeUm("replay", float(pixel_size_um))
        core.setPixelSizeConfig("replay")
    log.info("replay camera: %d frames of %dx%d %s at %s", len(frames), frames.shape[2], frames.shape[1],
             frames.dtype, f"{fps:g} fps" if fps else "full speed")
    return core
