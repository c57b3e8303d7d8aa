"""Free-space check before a run: an output that cannot fit fails before the first tile, not at the last.

Imports only the standard library and ``scopert.errors``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from scopert.errors import OutputError

MARGIN = 1.05  # headroom for container metadata (TIFF IFDs, HDF5/Zarr chunk indexes)


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(dest: str | os.PathLike[str], need_bytes: int, what: str = "the output") -> None:
    """Raise OutputError when the file system holding ``dest`` has less than ``need_bytes`` (plus 5%) free."""
    folder = _existing_parent(Path(dest).parent)
    free = shutil.disk_usage(folder).free
    need = int(need_bytes * MARGIN)
    if need > free:
        raise OutputError(
            f"{what} ({need / 2**20:.1f} MiB estimated) does not fit in the {free / 2**20:.1f} MiB free on the "
            f"disk of {folder}; free some space, or write to another disk (or a smaller bit depth, -b 16 / -b 8)"
        )
