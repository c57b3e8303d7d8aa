"""The backend protocol: what tiling, stitching and streaming need from an inference engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class BackendInfo:
    """What was chosen and why; printed by ``scopert doctor`` and logged by every run."""

    name: str
    device: str
    precision: str = "fp32"
    providers: list[str] = field(default_factory=list)
    reason: str = ""


class Backend(Protocol):
    info: BackendInfo
    input_name: str
    output_name: str
    metadata: dict[str, str]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch in the model's own layout (float32) and return the output batch."""
