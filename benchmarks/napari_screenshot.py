"""The README's napari picture: a live acquisition through the plugin's Live widget, raw and restored side by side.

The replay camera plays the trackpy bulk-water movie (real brightfield, 424x640) at 10 fps through the RCAN 2D
seed model (imported, exported; tests/families.py); when the MDA ends the widget shows the written OME-Zarr store.
Runs under a virtual display when there is none (PyVirtualDisplay + Xvfb, as the tests do). Writes
benchmarks/results/napari_live.png.

    python benchmarks/napari_screenshot.py
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MOVIE = Path("/work/shared/data/trackpy_bulk_water/bulk_water_first40.tif")
OUT = REPO / "benchmarks" / "results" / "napari_live.png"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    display = None
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        display = Display(size=(1600, 1000))
        display.start()
    try:
        import napari
        from qtpy.QtWidgets import QApplication

        from scopert.napari_plugin.live_widget import LiveWidget
        from tests.families import exported

        with tempfile.TemporaryDirectory() as tmp:
            viewer = napari.Viewer(show=True, title="ScopeRT live acquisition")
            viewer.window._qt_window.resize(1600, 1000)
            widget = LiveWidget(viewer)
            viewer.window.add_dock_widget(widget, name="ScopeRT: Live acquisition", area="right")
            widget.panel.set_path(str(exported("rcan2d", Path(tmp))))
            widget.camera_path.setText(str(MOVIE))
            widget.fps.setValue(10)
            widget.frames.setValue(40)
            widget.output.setText(str(Path(tmp) / "live.zarr"))
            widget.start_button.click()
            deadline = time.monotonic() + 300
            while widget.report is None and time.monotonic() < deadline:
                QApplication.processEvents()
                time.sleep(0.02)
            if widget.report is None:
                raise SystemExit("the live acquisition did not finish in 5 minutes")
            viewer.canvas.grid.enabled = True
            viewer.dims.set_point(0, 20)
            viewer.reset_view()
            for _ in range(20):
                QApplication.processEvents()
                time.sleep(0.05)
            viewer.screenshot(str(OUT), canvas_only=False)
            logging.info("%s; wrote %s", widget.status.text(), OUT)
            viewer.close()
    finally:
        if display is not None:
            display.stop()


if __name__ == "__main__":
    main()
