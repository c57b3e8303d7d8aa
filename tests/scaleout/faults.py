"""Block functions with injected faults, importable by the workers of a test cluster."""

from __future__ import annotations

import os
from pathlib import Path

from scopert.scaleout.tasks import run_block


class ExitOnce:
    """Kill the worker process (``os._exit(1)``) the first time it runs block ``name``; run it normally after."""

    def __init__(self, marker: str, name: str) -> None:
        self.marker, self.name = marker, name

    def __call__(self, block, job):
        if block.name == self.name and not Path(self.marker).exists():
            Path(self.marker).touch()
            os._exit(1)
        return run_block(block, job)
