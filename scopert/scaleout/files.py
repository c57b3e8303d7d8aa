"""A folder of files on a Dask cluster: one task per file, each written atomically by the single-machine code.

The client has already planned every file (``plan_folder``: headers only, outputs that exist are complete and
skipped, free space checked), so a bad file fails before any work starts, and rerunning an interrupted folder run
goes on where it stopped, as without ``--cluster``. Each task calls ``apply_file`` on its worker with the model
from the worker's cache; outputs are those a single-machine folder run writes. Imports scopert only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from scopert.checksum import sha256_file
from scopert.scaleout.dispatch import DispatchStats, dispatch, gpu_resources
from scopert.scaleout.tasks import ModelRef, WorkerCache, run_file


def run_files(client: Any, model: Any, jobs: list[tuple[Path, Path, Path | None]], opts: Any, *,
              backend: str = "auto", device: str = "auto", progress: Callable[[int], None] | None = None,
              window: int | None = None) -> tuple[DispatchStats, float]:
    """Restore every (input, output, ground truth) of ``jobs`` on the cluster; return stats and seconds."""
    from scopert.scaleout.cluster import total_threads

    t0 = time.perf_counter()
    ref = ModelRef(str(Path(model.path).absolute()), sha256_file(model.path), backend, device)
    client.register_plugin(WorkerCache())
    items = [(str(Path(s).absolute()), str(Path(d).absolute()), str(Path(g).absolute()) if g else None)
             for s, d, g in jobs]
    stats = dispatch(client, _run_item, items, (opts, ref), window=window or max(8, 2 * total_threads(client)),
                     what=lambda item: Path(item[0]).name, resources=gpu_resources(client),
                     on_done=(lambda info: progress(1)) if progress else None,
                     failed_hint="; their outputs are complete: fix the cause and rerun (finished files are skipped)")
    return stats, time.perf_counter() - t0


def _run_item(item: tuple[str, str, str | None], opts: Any, ref: ModelRef) -> dict[str, Any]:
    src, dst, gt = item
    return run_file(src, dst, gt, opts, ref)
