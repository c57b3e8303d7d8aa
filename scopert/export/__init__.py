"""Export stage: PyTorch run folder -> one verified, self-contained ONNX file carrying its ModelCard.

Imports ``scopert.training`` (the family registry), ``scopert.card``, and the lean runtime to verify what it
writes (ONNX Runtime and OpenVINO against PyTorch, the CPU gates, calibration tiles cut the runtime's way); the
runtime never imports the export stage. ``bioimageio/`` holds both directions of bioimage.io. The submodules
import torch/onnx lazily where they can, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_run", "read_card", "measure_halo", "measure_receptive_field", "RFResult"]


def __getattr__(name: str) -> Any:
    """Load the public functions on first use (keeps ``import scopert.export`` free of torch)."""
    if name in ("export_run", "read_card"):
        from scopert.export import onnx_export

        return getattr(onnx_export, name)
    if name in ("measure_halo", "measure_receptive_field", "RFResult"):
        from scopert.export import receptive_field

        return getattr(receptive_field, name)
    raise AttributeError(f"module 'scopert.export' has no attribute {name!r}")
