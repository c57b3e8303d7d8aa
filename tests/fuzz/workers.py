"""Fuzz cases in spawned worker processes: a hang or a crash (a segfault in a C library) is caught, counted as
one case's outcome, and the worker replaced. Shared by the reader fuzzing (benchmarks/fuzz_readers.py) and the
checkpoint-importer fuzzing (tests/training/checkpoint_fuzz.py).

A worker calls ``setup(*args)`` once (imports, base files) to get a handler, then answers each job the parent
sends with ``handler(job)``, a picklable result. ``setup`` must be a module-level function (spawn pickles it).
"""

from __future__ import annotations

import collections
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait
from typing import Any

Failure = tuple[str, str, float]  # outcome ("hang" | "crash"), detail, seconds


def _serve(conn: Any, setup: Callable[..., Callable[[Any], Any]], args: tuple) -> None:
    handle = setup(*args)
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(handle(job))


class Worker:
    """One worker process and the job it is running."""

    def __init__(self, setup: Callable[..., Callable[[Any], Any]], args: tuple = (), start_timeout: float = 300):
        self.setup, self.args, self.start_timeout = setup, args, start_timeout
        self.job: Any = None
        self.started = 0.0
        self._spawn()

    def _spawn(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited threads or torch state
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, self.setup, self.args), daemon=True)
        self.process.start()
        child.close()
        try:
            ready = self.conn.poll(self.start_timeout) and self.conn.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise RuntimeError(f"the fuzz worker did not start (exit code {self.process.exitcode})")

    def send(self, job: Any) -> None:
        self.job, self.started = job, time.perf_counter()
        self.conn.send(job)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)

    def replace(self) -> None:
        """Kill this worker (hung or dead) and start a fresh one."""
        self.kill()
        self.conn.close()
        self._spawn()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(5)
        self.kill()


def run_jobs(jobs: Iterable[Any], workers: list[Worker], timeout: float) -> Iterator[tuple[Any, Any | Failure]]:
    """Run ``jobs`` on ``workers``; yield (job, the handler's result) or (job, Failure) as each ends."""
    pending = collections.deque(jobs)
    for worker in workers:
        if pending:
            worker.send(pending.popleft())
    while any(w.job is not None for w in workers):
        busy = [w for w in workers if w.job is not None]
        ready = wait([w.conn for w in busy], timeout=0.5)
        now = time.perf_counter()
        for worker in busy:
            job, seconds = worker.job, now - worker.started
            if worker.conn in ready:
                try:
                    answer: Any = worker.conn.recv()
                except (EOFError, OSError):  # the worker died mid-case
                    worker.process.join(5)
                    answer = ("crash", f"worker exit code {worker.process.exitcode}", seconds)
                    worker.replace()
            elif seconds > timeout:
                answer = ("hang", f"no answer within {timeout:.0f} s", seconds)
                worker.replace()
            else:
                continue
            worker.job = None
            if pending:
                worker.send(pending.popleft())
            yield job, answer
