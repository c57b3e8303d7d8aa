"""The model part of both widgets: an ``.onnx`` path, the backend and precision asked for, and what will run.

Loading happens when the path or a choice changes, so the card, the backend and the precision shown (each with
its reason) are the ones a run uses. A bad file shows its one-line error in place of the card.
"""

from __future__ import annotations

import logging
from typing import Any

from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                            QWidget)

from scopert.errors import ScopertError

log = logging.getLogger(__name__)

PRECISIONS = ("f32", "auto", "bf16", "int8")


def describe(model: Any) -> str:
    """The card and the run decisions, in the words a user checks before pressing Run."""
    card = model.card
    halo = ", ".join(f"{a} {n}" for a, n in card.halo.items() if n) or "none"
    scale = ", ".join(f"{a} x{s:g}" for a, s in card.output.scale.items() if s != 1)
    decision = model.precision_decision
    lines = [
        f"family: {card.family} ({card.name})",
        f"axes: {card.input.axes} -> {card.output.axes}, {card.input.channels} -> {card.output.channels} channels"
        + (f", output {scale}" if scale else ""),
        f"halo: {halo}; tile: {dict(card.default_tile) or 'planned per input'}",
        f"backend: {model.backend.info.name} ({model.backend.info.reason})",
        f"precision: {model.backend.info.precision}"
        + (f" ({decision.reason})" if decision is not None and decision.reason else ""),
    ]
    return "\n".join(lines)


class ModelPanel(QWidget):
    """Pick a model; ``model`` is the loaded one (None until a file loads)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from scopert.runtime.backends.base import backend_choices

        self.model: Any = None
        self.path = QLineEdit()
        self.path.setPlaceholderText("model.onnx")
        self.path.editingFinished.connect(self.reload)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.backend = QComboBox()
        self.backend.addItems(list(backend_choices()))
        self.precision = QComboBox()
        self.precision.addItems(list(PRECISIONS))
        self.backend.currentTextChanged.connect(self.reload)
        self.precision.currentTextChanged.connect(self.reload)
        self.card = QLabel("no model loaded")
        self.card.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.path)
        row.addWidget(browse)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("model", row)
        form.addRow("backend", self.backend)
        form.addRow("precision", self.precision)
        form.addRow(self.card)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "ScopeRT model", "", "ONNX models (*.onnx);;TensorRT (*.engine)")
        if path:
            self.set_path(path)

    def set_path(self, path: str) -> None:
        self.path.setText(str(path))
        self.reload()

    def reload(self) -> None:
        """Open the model with the chosen backend and precision; show its card or the error."""
        from scopert.runtime import load

        if self.model is not None:
            self.model.close()
            self.model = None
        path = self.path.text().strip()
        if not path:
            self.card.setText("no model loaded")
            return
        try:
            self.model = load(path, backend=self.backend.currentText(), precision=self.precision.currentText())
        except ScopertError as e:
            self.card.setText(f"cannot use {path}: {e}")
            return
        self.card.setText(describe(self.model))
        log.info("napari: loaded %s on %s", path, self.model.backend.info.name)

    def close_model(self) -> None:
        if self.model is not None:
            self.model.close()
            self.model = None
