"""A live acquisition in napari: start an MDA (the ``scopert acquire`` path), watch raw and restored frames arrive.

The MDA runs in a thread worker inside ``scopert.acquisition.attach``, so frames are written to OUT.zarr and
counted exactly as on the command line. The viewer never slows the microscope: the MDA's thread only keeps a
reference to the newest raw and restored frame, and a 20 Hz timer in the GUI thread shows them. When the MDA ends
(its end, Stop, or an error) the live layers are replaced by the written store, opened by ScopeRT's reader:
what napari shows is what is on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QLineEdit, QPushButton, QSpinBox,
                            QVBoxLayout, QWidget)

from scopert.errors import ScopertError
from scopert.napari_plugin.model_panel import ModelPanel
from scopert.napari_plugin.reader import get_reader

log = logging.getLogger(__name__)

LIVE_RAW, LIVE_RESTORED = "raw (live)", "restored (live)"
REFRESH_MS = 50


class LiveWidget(QWidget):
    """Model, camera (a replay recording or a Micro-Manager configuration; or ``core`` given), sequence, output."""

    def __init__(self, napari_viewer: Any, core: Any = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.core = core
        self.panel = ModelPanel()
        self.camera_kind = QComboBox()
        self.camera_kind.addItems(["replay recording", "Micro-Manager configuration"])
        self.camera_path = QLineEdit()
        self.camera_path.setPlaceholderText("movie.tif (replay) or microscope.cfg")
        self.fps = QDoubleSpinBox()
        self.fps.setRange(0, 10000)
        self.fps.setValue(20)
        self.fps.setSpecialValueText("as fast as asked")
        self.sequence_path = QLineEdit()
        self.sequence_path.setPlaceholderText("sequence.yaml (useq); empty: a time-lapse of the frames below")
        self.frames = QSpinBox()
        self.frames.setRange(1, 10_000_000)
        self.frames.setValue(100)
        self.interval = QDoubleSpinBox()
        self.interval.setRange(0, 3600)
        self.interval.setSuffix(" s")
        self.on_full = QComboBox()
        self.on_full.addItems(["drop", "block"])
        self.output = QLineEdit()
        self.output.setPlaceholderText("OUT.zarr (or OUT.tif)")
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        if core is None:
            form.addRow("camera", self.camera_kind)
            form.addRow("file", self.camera_path)
            form.addRow("replay fps", self.fps)
        form.addRow("sequence", self.sequence_path)
        form.addRow("frames", self.frames)
        form.addRow("interval", self.interval)
        form.addRow("when behind", self.on_full)
        form.addRow("output", self.output)
        box = QVBoxLayout(self)
        box.addWidget(self.panel)
        box.addLayout(form)
        box.addWidget(self.start_button)
        box.addWidget(self.stop_button)
        box.addWidget(self.status)
        box.addStretch()
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.worker: Any = None
        self.report: Any = None
        self._running_core: Any = None
        self._latest: dict[str, Any] = {}
        self._shown: dict[str, int] = {}
        self._timer = QTimer(self)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self._refresh)

    # ---- starting ----------------------------------------------------------------------------------------
    def _sequence(self) -> Any:
        from scopert.acquisition import read_sequence

        if self.sequence_path.text().strip():
            return read_sequence(self.sequence_path.text().strip())
        import useq

        return useq.MDASequence(time_plan={"interval": self.interval.value(), "loops": self.frames.value()})

    def _core(self) -> Any:
        if self.core is not None:
            return self.core
        from scopert.acquisition.cores import CameraSpec, make_core

        path = Path(self.camera_path.text().strip())
        if not path.is_file():
            raise ScopertError(f"camera file {path} does not exist; give a recording (.tif) or a .cfg")
        replay = self.camera_kind.currentIndex() == 0
        return make_core(CameraSpec("replay" if replay else "mm-config", path,
                                    (self.fps.value() or None) if replay else None))

    def _output(self) -> Path:
        from scopert.runtime.io.atomic import check_output_path

        text = self.output.text().strip()
        if not text:
            raise ScopertError("give an output (OUT.zarr, or OUT.tif): raw and restored frames are written there")
        out = check_output_path(text, (), option="output", suffixes=(".zarr", ".tif", ".tiff"), folder="creatable")
        if out.exists():
            raise ScopertError(f"{out} exists; choose another name (a run never replaces a store)")
        return out

    def start(self) -> None:
        """Check everything, then run the MDA in a thread worker (returns at once)."""
        from napari.qt.threading import create_worker

        from scopert.acquisition import attach

        model = self.panel.model
        try:
            if model is None:
                raise ScopertError("choose a model (.onnx) first")
            sequence, out, core = self._sequence(), self._output(), self._core()
        except ScopertError as e:
            self.status.setText(str(e))
            return
        self._running_core, self._latest, self._shown, self.report = core, {}, {}, None
        on_full = self.on_full.currentText()

        def job() -> Any:
            with attach(core, model, sequence, out, on_full=on_full,
                        on_restored=lambda frame: self._latest.__setitem__("restored", frame.restored)) as run:
                core.mda.run(sequence)
            return run.report

        core.mda.events.frameReady.connect(self._on_frame)
        self.worker = create_worker(job, _start_thread=False, _connect={  # errored given: not re-raised in Qt
            "returned": lambda report: self._finished(out, report),
            "errored": lambda exc: self._finished(out, None, exc)})
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText(f"acquiring {dict(sequence.sizes)} into {out.name}…")
        self._timer.start()
        self.worker.start()

    def stop(self) -> None:
        """Cancel the MDA; what arrived is written and shown."""
        if self._running_core is not None:
            self._running_core.mda.cancel()
            self.status.setText("stopping…")

    # ---- while it runs ---------------------------------------------------------------------------------
    def _on_frame(self, img: np.ndarray, event: Any, meta: Any = None) -> None:
        self._latest["raw"] = img  # the MDA's thread: a reference, nothing more

    def _refresh(self) -> None:
        for key, name in (("raw", LIVE_RAW), ("restored", LIVE_RESTORED)):
            data = self._latest.get(key)
            if data is None or self._shown.get(key) == id(data):
                continue
            self._shown[key] = id(data)
            shown = data[0] if key == "restored" else data  # channel 0 of (C, [Z,] Y, X)
            if name in self.viewer.layers:
                self.viewer.layers[name].data = shown
            else:
                scale = self._running_core.getPixelSizeUm() or 1.0
                self.viewer.add_image(shown, name=name, scale=(scale,) * shown.ndim)

    # ---- the end -----------------------------------------------------------------------------------------
    def _finished(self, out: Path, report: Any, exc: BaseException | None = None) -> None:
        self._timer.stop()
        self._running_core.mda.events.frameReady.disconnect(self._on_frame)
        self.report = report
        for name in (LIVE_RAW, LIVE_RESTORED):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        reader = get_reader(str(out)) if out.exists() else None
        if reader is not None:
            for data, meta, _kind in reader(str(out)):
                meta["name"] = f"{out.stem} {meta['name']}"
                self.viewer.add_image(data, **meta)
        if report is None:
            self.status.setText(f"the acquisition failed: {exc}")
        else:
            verdict = "kept up" if report.kept_up else "did NOT keep up"
            self.status.setText(
                f"{verdict}: received {report.received}, restored {report.restored}, dropped {report.dropped}, "
                f"failed {report.failed}; latency p50 {report.latency_ms_p50:.1f} ms; written to {out}")
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.worker = None
