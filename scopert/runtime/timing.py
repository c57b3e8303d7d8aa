"""One timing loop for engines compared side by side (the measured engine choice, ``bench --compare``): one
warm-up each, then the runners alternate within each repeat, best of ``repeats``, so a neighbour's burst on a
shared machine hits every engine alike. A leaf: the standard library only.
"""

from __future__ import annotations

import time
from typing import Any, Callable

REPEATS = 3
SLOW_TILE_S = 1.0  # seconds per run above which two timed rounds are enough


def time_engines(runners: dict[str, Callable[[], Any]], repeats: int = REPEATS) -> dict[str, float]:
    """Best seconds of each runner after one warm-up, the runners alternating within each repeat."""
    best = {name: float("inf") for name in runners}
    for name, run in runners.items():  # warm-up (compile, allocate); its time bounds the repeats
        t0 = time.perf_counter()
        run()
        best[name] = time.perf_counter() - t0
    if max(best.values()) > SLOW_TILE_S:  # a slow tile: two timed rounds keep the measurement short (one round
        repeats = min(repeats, 2)  # let a neighbour's burst flip a 10% difference)
    best = {name: float("inf") for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best
