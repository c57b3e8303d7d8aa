"""Progress for long loops: a live bar on a terminal, a few plain log lines anywhere else.

A tqdm bar redraws itself with a carriage return several times a second. In a pipe, a CI log or a batch
job's output file every redraw stays in the text: one '\\r' frame per step, thousands of them in a training
run. So ``progress_bar`` shows the bar only when its stream is a terminal. Otherwise it returns a
``LogProgress`` that logs one line when the loop passes each quarter, and only when at least
``min_interval_s`` went by since the last line: short loops say nothing beyond their caller's own summary
line, long ones say where they are a few times. Imports the standard library (tqdm lazily, for terminals).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

log = logging.getLogger(__name__)


def is_terminal(stream: Any) -> bool:
    """True when ``stream`` is an interactive terminal (a bar can redraw in place there)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LogProgress:
    """The tqdm calls a loop makes (update, set_postfix, close), answered with occasional log lines."""

    def __init__(self, total: int | None, desc: str, logger: logging.Logger | None = None,
                 every: float = 0.25, min_interval_s: float = 30.0) -> None:
        self.total, self.desc = total, desc
        self.logger = logger or log
        self.every, self.min_interval_s = every, min_interval_s
        self.n = 0
        self.postfix = ""
        self.start = self.last_line = time.monotonic()
        self.next_mark = every
        self.lines = 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.total:
            if self.n / self.total < self.next_mark:
                return
            while self.next_mark <= self.n / self.total:
                self.next_mark += self.every
        if now - self.last_line < self.min_interval_s:
            return
        self.last_line = now
        self.lines += 1
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        self.logger.info("%s: %s in %.0f s%s", self.desc, done, now - self.start,
                         f", {self.postfix}" if self.postfix else "")

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(values or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        pass

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, *, enabled: bool = True, stream: TextIO | None = None,
                 logger: logging.Logger | None = None, min_interval_s: float = 30.0, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar on ``stream`` (default stderr) when it is a terminal, else a ``LogProgress``.

    ``enabled=False`` gives a LogProgress that never logs (the caller asked for silence)."""
    stream = stream if stream is not None else sys.stderr
    if enabled and is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=stream, **tqdm_kwargs)
    return LogProgress(total, desc, logger, min_interval_s=min_interval_s if enabled else float("inf"))
