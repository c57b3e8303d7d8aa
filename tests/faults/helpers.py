"""Running ``scopert`` in a real child process with one fault, and the checks every fault must pass.

The contract (issue 11): no partial output under the final name (nor a temporary beside it), one line on
stderr that says what happened, exit 1 or 2 (130/143 for Ctrl-C/SIGTERM), never a traceback; a rerun
completes with the same result.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DRIVER = Path(__file__).with_name("driver.py")
TEMP_MARKS = (".partial-", ".tmp", ".old-")


@dataclass
class Run:
    """What a child run did."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float  # for an interrupted run: from the signal to the exit

    @property
    def last_line(self) -> str:
        """The last non-empty line of stderr (progress bars end lines with carriage returns)."""
        lines = [seg.strip() for seg in self.stderr.replace("\r", "\n").splitlines() if seg.strip()]
        return lines[-1] if lines else ""


def child_env(tmp: Path, **fault: object) -> dict[str, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONWARNINGS", None)
    for key, value in fault.items():
        env[f"FAULT_{key.upper()}"] = str(value)
    if fault.get("action") == "mark":
        env.setdefault("FAULT_MARKER", str(tmp / "fault.marker"))
    return env


def _limit_file_size(limit: int):
    def apply() -> None:  # in the child, before exec: writes past `limit` bytes fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def run_scopert(args: list[object], cwd: Path, *, fsize: int | None = None, timeout: float = 180,
                **fault: object) -> Run:
    """``scopert ARGS`` through the fault driver; ``fsize`` caps the size of every file the child writes."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(DRIVER), *map(str, args)], cwd=cwd, env=child_env(cwd, **fault),
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_limit_file_size(fsize) if fsize else None)
    return Run(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0)


def default_sigint() -> None:
    """In the child: SIGINT back to its default, so Python turns it into KeyboardInterrupt. A test run started
    in the background by a non-interactive shell inherits SIGINT ignored, and the signal would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_scopert(args: list[object], cwd: Path, sig: int, *, at: int = 3, hook: str = "ort",
                      slow: float = 0.2, timeout: float = 120, **extra: object) -> Run:
    """Start ``scopert ARGS``; when the driver marks that the hooked call number ``at`` began (the run is under
    way, and from then on each call takes ``slow`` s more), send ``sig``, as a user or a scheduler does.
    ``extra``: more FAULT_* settings (e.g. ``fake_trt=1``)."""
    marker = cwd / "fault.marker"
    marker.unlink(missing_ok=True)
    env = child_env(cwd, hook=hook, at=at, action="mark", slow=slow, marker=marker, **extra)
    proc = subprocess.Popen([sys.executable, str(DRIVER), *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"the run ended (exit {proc.returncode}) before call {at}: {err[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no call {at} within {timeout} s")
            time.sleep(0.02)
        proc.send_signal(sig)
        t0 = time.perf_counter()
        out, err = proc.communicate(timeout=60)
        return Run(proc.returncode, out, err, time.perf_counter() - t0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def leftovers(folder: Path) -> list[str]:
    """Temporaries of atomic writers anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if any(m in p.name for m in TEMP_MARKS))


def expect_clean_failure(run: Run, codes: tuple[int, ...], *words: str, absent: tuple[Path, ...] = (),
                         folder: Path | None = None) -> str:
    """The fault contract for one failed run; returns a short description of what happened (for the table)."""
    assert run.returncode in codes, (run.returncode, run.stderr[-3000:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    line = run.last_line
    messages = [seg for seg in run.stderr.replace("\r", "\n").splitlines()
                if seg.strip().startswith(("error:", "interrupted", "terminated", "aborted"))]
    assert len(messages) == 1 and messages[0].strip() == line, run.stderr[-3000:]
    for word in words:
        assert word.lower() in line.lower(), (word, line)
    for path in absent:
        assert not path.exists(), f"{path} exists after the fault"
    if folder is not None:
        assert leftovers(folder) == [], leftovers(folder)
    return f"exit {run.returncode}: {line[:70]}"


SIGNALS = {"SIGINT": (signal.SIGINT, 130, "interrupted"), "SIGTERM": (signal.SIGTERM, 143, "terminated")}
