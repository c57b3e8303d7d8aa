"""At the microscope: restore frames inside a pymmcore-plus acquisition (MDA) as the camera delivers them.

``attach(core, model, sequence, out=...)`` connects a loaded model to a ``CMMCorePlus``/``UniMMCore`` for the length
of one MDA (``restorer``); raw and restored frames go into one OME-Zarr store as they arrive (``store``);
``replay_core`` builds a core whose pure-Python camera plays a real recording at a set frame rate, so a run can be
rehearsed before the microscope (``replay``). This package sits beside the runtime: it imports ``scopert.runtime``,
which never imports it; pymmcore-plus and useq-schema are imported only here (``pip install 'scopert[microscope]'``).
"""

from scopert.acquisition.replay import ReplayCamera, read_sequence, replay_core
from scopert.acquisition.restorer import AcquisitionReport, Restorer, attach

__all__ = ["AcquisitionReport", "ReplayCamera", "Restorer", "attach", "read_sequence", "replay_core"]
