"""Submit many small tasks with a bounded number in flight, stop at the first failure, keep the client flat.

``client.map`` over 100k items stalls the scheduler before any work starts (dask/distributed#2181), and every
finished future the client keeps costs memory. Here at most ``window`` tasks are submitted at a time; each
finished one is released and the next submitted, so client and scheduler memory do not grow with the number
of blocks. ``retries`` reruns a task that raised; a worker that dies mid-task (killed, out of memory) has its
task rescheduled by Dask itself. The first task that still fails cancels the rest and ends the run with a
RunError that names the task, the worker and the cause. Imports distributed (inside the function) and scopert.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from scopert.errors import RunError

log = logging.getLogger(__name__)

RETRIES = 2


@dataclass
class DispatchStats:
    """Aggregates only (the client keeps no per-task record): counts and summed seconds."""

    done: int = 0
    task_seconds: float = 0.0
    compute_seconds: float = 0.0
    workers: set[str] = field(default_factory=set)


def gpu_resources(client: Any) -> dict[str, int] | None:
    """``{'GPU': 1}`` when a worker of this cluster offers GPUs (then every task takes one), else None."""
    try:
        workers = client.scheduler_info().get("workers", {})
    except Exception:  # noqa: BLE001
        return None
    return {"GPU": 1} if any((w.get("resources") or {}).get("GPU") for w in workers.values()) else None


def dispatch(client: Any, func: Callable[..., dict[str, Any]], items: Iterable[Any], args: tuple = (), *,
             window: int, what: Callable[[Any], str], on_done: Callable[[dict[str, Any]], None] | None = None,
             resources: dict[str, int] | None = None, retries: int = RETRIES,
             failed_hint: str = "") -> DispatchStats:
    """Run ``func(item, *args)`` for every item; return aggregate stats or raise RunError at the first failure."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    token = uuid.uuid4().hex[:8]
    todo = iter(items)
    pending: dict[Any, Any] = {}
    ac = as_completed()
    stats = DispatchStats()

    def submit_next() -> bool:
        item = next(todo, None)
        if item is None:
            return False
        fut = client.submit(func, item, *args, key=f"scopert-{token}-{stats.done + len(pending)}-{what(item)}",
                            retries=retries, resources=resources, pure=False)
        pending[fut.key] = item
        ac.add(fut)
        return True

    for _ in range(max(1, window)):
        if not submit_next():
            break
    for fut in ac:
        item = pending.pop(fut.key)
        if fut.status in ("lost", "pending"):  # its worker died holding the result: Dask computes it again
            pending[fut.key] = item
            ac.add(fut)
            continue
        if fut.status != "finished":
            exc = fut.exception() if fut.status == "error" else None
            for other in list(ac.futures):
                other.cancel()
            if isinstance(exc, KilledWorker):
                cause = (f"{what(item)} killed the worker running it several times in a row (out of memory, or a "
                         "crash in the backend: see the workers' logs)")
            else:
                cause = str(exc) if exc is not None else f"{what(item)} was {fut.status}"
            raise RunError(f"{cause.rstrip('. ')}; {stats.done} finished before it{failed_hint}")
        info = fut.result()
        fut.release()
        stats.done += 1
        stats.task_seconds += float(info.get("seconds", 0.0))
        stats.compute_seconds += float(info.get("compute_s", info.get("seconds", 0.0)))
        if "worker" in info:
            stats.workers.add(info["worker"])
        if on_done is not None:
            on_done(info)
        submit_next()
    return stats
