"""Restore the selected napari layer with a ScopeRT model, in a thread, with progress and a working Cancel.

The run is ``Model.predict`` on the layer's full-resolution data with the axes its labels name (or the ones typed
in); its per-tile progress drives the bar, and Cancel stops it at the next tile. The result is added as a layer
with the source's scale and translate (pixel sizes divided by the model's output scale, so a 2x model's layer
lies over its source).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget

from scopert.errors import ScopertError
from scopert.napari_plugin.model_panel import ModelPanel
from scopert.napari_plugin.reader import channel_layers

log = logging.getLogger(__name__)

AXIS_LETTERS = set("tczyx")


class RunCancelled(Exception):
    """Raised from the progress callback when the user pressed Cancel."""


class _Progress(QObject):
    tiles = Signal(int)  # emitted from the worker thread; Qt delivers it in the widget's thread


def layer_axes(layer: Any) -> str | None:
    """The layer's axes when its labels are axis letters (ScopeRT's reader sets them), else None."""
    labels = [str(a).lower() for a in getattr(layer, "axis_labels", ())]
    if labels and all(a in AXIS_LETTERS for a in labels) and len(set(labels)) == len(labels):
        return "".join(labels)
    return None


def restored_layer_kwargs(layer: Any, model: Any, data_axes: str) -> dict[str, Any]:
    """Scale and translate of the result: the source's, per output axis, over the model's output scale."""
    scale = dict(zip(data_axes, layer.scale))
    translate = dict(zip(data_axes, layer.translate))
    out_scale = model.card.output.scale
    shown = model.output_axes(data_axes).replace("c", "")
    kwargs = {"scale": tuple(scale[a] / float(out_scale.get(a, 1.0)) for a in shown),
              "translate": tuple(translate[a] for a in shown), "axis_labels": tuple(shown)}
    units = getattr(layer, "units", None)
    if units is not None and len(units) == len(data_axes):
        kwargs["units"] = tuple(str(u) for a, u in zip(data_axes, units) if a in shown)
    return kwargs


class RestoreWidget(QWidget):
    """Pick a model and a layer; Run restores it in a thread worker; Cancel stops it at the next tile."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.panel = ModelPanel()
        self.layer = QComboBox()
        self.axes = QLineEdit()
        self.axes.setPlaceholderText("from the layer (e.g. zyx, tyx)")
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.worker: Any = None
        self._cancel = threading.Event()
        self._signals = _Progress()
        self._signals.tiles.connect(lambda n: self.progress.setValue(self.progress.value() + n))
        form = QFormLayout()
        form.addRow("layer", self.layer)
        form.addRow("axes", self.axes)
        box = QVBoxLayout(self)
        box.addWidget(self.panel)
        box.addLayout(form)
        box.addWidget(self.run_button)
        box.addWidget(self.cancel_button)
        box.addWidget(self.progress)
        box.addWidget(self.status)
        box.addStretch()
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    def _refresh_layers(self, *_: Any) -> None:
        current = self.layer.currentText()
        self.layer.clear()
        from napari.layers import Image

        self.layer.addItems([lay.name for lay in self.viewer.layers if isinstance(lay, Image)])
        if current:
            self.layer.setCurrentText(current)

    def run(self) -> None:
        """Start restoring the chosen layer (returns at once; the worker reports back)."""
        from napari.qt.threading import create_worker

        model = self.panel.model
        if model is None or not self.layer.currentText():
            self.status.setText("choose a model (.onnx) and an image layer first")
            return
        layer = self.viewer.layers[self.layer.currentText()]
        data = np.asarray(layer.data[0] if layer.multiscale else layer.data)
        axes = self.axes.text().strip().lower() or layer_axes(layer)
        try:
            total = model.n_tiles(data.shape, axes)
        except ScopertError as e:
            self.status.setText(str(e))
            return
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self._cancel.clear()

        def on_tile(n: int) -> None:
            if self._cancel.is_set():
                raise RunCancelled
            self._signals.tiles.emit(n)

        def job() -> tuple[np.ndarray, str]:
            from scopert.runtime.layout import resolve_data_axes

            data_axes = resolve_data_axes(data, model.card, axes)
            return model.predict(data, axes=data_axes, progress=on_tile), data_axes

        self.worker = create_worker(job, _start_thread=False, _connect={  # errored given: not re-raised in Qt
            "returned": lambda result: self._done(layer, model, result), "errored": self._failed,
            "finished": self._idle})
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"restoring {layer.name} ({total} tiles)…")
        self.worker.start()

    def cancel(self) -> None:
        self._cancel.set()
        self.status.setText("cancelling…")

    def _done(self, layer: Any, model: Any, result: tuple[np.ndarray, str]) -> None:
        out, data_axes = result
        kwargs = restored_layer_kwargs(layer, model, data_axes)
        name = f"{layer.name} restored ({model.card.family})"
        for data, meta, _kind in channel_layers(name, [out], model.output_axes(data_axes), kwargs, []):
            self.viewer.add_image(data, **meta)
        self.status.setText(f"done: {name}")

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, RunCancelled):
            self.status.setText("cancelled: no layer added")
        else:
            self.status.setText(f"failed: {exc}")
            log.error("napari restore failed: %s", exc)

    def _idle(self) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.worker = None
