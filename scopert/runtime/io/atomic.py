"""Atomic outputs and output-path checks: nothing is ever half-written, and no input is overwritten.

Writers write to a hidden temporary name in the destination folder (``.NAME.partial-<pid>``) and
rename it onto the destination only when they finished without error. The rename is atomic within one file
system, so a reader (or a resumed batch run) sees either the complete old file, the complete
new file, or nothing.

Imports only the standard library and ``scopert.errors``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from scopert.errors import OutputError, RunError

log = logging.getLogger(__name__)

PARTIAL_MARK = ".partial-"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
# numpy's tofile (used by tifffile) reports a short write without an errno: the disk filled mid-write.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


class DiskFullError(RunError):
    """An output could not be written because its disk (or the process's file-size limit) is full."""


def disk_full_cause(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc`` (itself, or down its cause/context chain) that says the disk is full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and (exc.errno in DISK_FULL_ERRNOS or _SHORT_WRITE.search(str(exc))):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full_message(dest: str | os.PathLike[str] | None, cause: OSError) -> str:
    """One line naming the file, its folder and the fix (free space, or another disk)."""
    detail = cause.strerror or str(cause)
    if dest is None and cause.filename:
        dest = cause.filename
    if dest is None:
        return f"disk full ({detail}); free space on the output disk or write to another one, then rerun the command"
    dest = Path(dest).absolute()
    name = dest.name
    if PARTIAL_MARK in name:  # a temporary of atomic_path: name the file it was going to become
        name = name.split(PARTIAL_MARK)[0][1:]
    elif name.endswith(".tmp"):
        name = name[: -len(".tmp")]
    return (f"disk full: cannot write {name} in {dest.parent} ({detail}); free space there or choose an output "
            "folder on another disk, then rerun the command")


def partial_path(dest: str | os.PathLike[str]) -> Path:
    """The temporary name used while ``dest`` is written: hidden, same folder, tagged with the pid."""
    dest = Path(dest)
    return dest.parent / f".{dest.name}{PARTIAL_MARK}{os.getpid()}"


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, so a crash cannot leave an empty 'complete' file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_partials(dest: str | os.PathLike[str]) -> list[Path]:
    """Delete temporaries of ``dest`` left by processes that no longer run (killed by SIGKILL or SIGBUS, which
    no handler can catch); a running writer's temporary is kept. Returns what was removed."""
    dest = Path(dest)
    removed = []
    for path in dest.parent.glob(f".{dest.name}{PARTIAL_MARK}*"):
        pid = path.name.rsplit(PARTIAL_MARK, 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            remove_path(path)
            removed.append(path)
            log.info("removed %s, left by an earlier run that was killed", path.name)
    return removed


@contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``, on error delete it.

    Use as ``with atomic_path(out) as tmp: write(tmp)``. The writer may create a file or a folder
    (a Zarr store) at ``tmp``. If the block raises (including KeyboardInterrupt), the temporary
    is removed and ``dest`` is left as it was. The destination folder must exist (see
    ``check_output_path``).
    """
    dest = Path(dest)
    tmp = partial_path(dest)
    if tmp.exists() or tmp.is_symlink():
        remove_path(tmp)  # left by an earlier crashed process that had the same pid
    remove_stale_partials(dest)
    try:
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise OutputError(f"the writer for {dest} produced no file; this is a bug, please report it")
        if tmp.is_file():
            fsync_path(tmp)
        if tmp.is_dir() and dest.is_dir():
            # os.replace cannot put a folder over a non-empty folder: move the old one aside first.
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException as exc:
        remove_path(tmp)
        full = disk_full_cause(exc)
        if full is not None and not isinstance(exc, DiskFullError):
            raise DiskFullError(disk_full_message(dest, full)) from exc
        raise
    log.debug("wrote %s", dest)


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``dest`` through ``atomic_path``: all of it, or nothing (and no temporary) on error."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def finish_atomic(atomic: Any, failure: BaseException | None, exc: BaseException | None) -> bool:
    """End an ``atomic_path`` context that a writer entered in its own ``__enter__``: keep the file when
    ``failure`` is None, else remove the temporary. Returns False, so that the caller's own exception ``exc``
    propagates from its ``__exit__``, or raises ``failure`` when that is a new one (an incomplete image)."""
    if failure is None:
        atomic.__exit__(None, None, None)
        return False
    try:
        atomic.__exit__(type(failure), failure, failure.__traceback__)
    except BaseException:
        pass  # atomic_path re-raises the failure after removing the temporary
    if failure is exc:
        return False
    raise failure


def same_file(a: Path, b: Path) -> bool:
    """The same file: one path, a symlink to it or a hard link."""
    if a.absolute().resolve() == b.absolute().resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _existing_ancestor(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _probe_writable(folder: Path, option: str, target: Path) -> None:
    """Create and remove a temporary file in ``folder``: the only test that also holds for root, read-only
    mounts and pseudo file systems (os.access says yes to root everywhere)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".scopert-probe-", dir=folder)
    except OSError as exc:
        raise OutputError(f"{option} {target}: cannot write in {folder} ({exc.strerror or exc}); the folder is "
                          "not writable: choose a folder you can write to.") from None
    os.close(fd)
    os.unlink(probe)


def check_writable_folder(folder: str | os.PathLike[str], option: str = "output",
                          target: str | os.PathLike[str] | None = None, *, create: bool = False,
                          make: bool = False) -> Path:
    """``folder`` exists (or, with ``create``, could be created; with ``make``, is created now) and a file can
    be written in it. Returns the folder that was probed."""
    folder = Path(folder).expanduser()
    target = Path(target) if target is not None else folder
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {target}: {folder} is a file, not a folder; choose another path.")
    if not folder.exists():
        if not (create or make):
            raise OutputError(f"{option} {target}: the folder {folder} does not exist; create it first or choose "
                              "another path.")
        ancestor = _existing_ancestor(folder)
        if not ancestor.is_dir():
            raise OutputError(f"{option} {target}: {ancestor} is a file, so the output folder {folder} cannot be "
                              "created; choose another path.")
        if make:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputError(f"{option} {target}: cannot create the output folder {folder} "
                                  f"({e.strerror or e}); choose a folder you can write to.") from None
        else:
            folder = ancestor
    _probe_writable(folder, option, target)
    return folder


def check_output_path(
    out: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    *,
    option: str = "output",
    suffixes: Iterable[str] | None = None,
    folder: Literal["make", "creatable", "existing"] = "make",
) -> Path:
    """Check that ``out`` can be written and is none of ``inputs``; return it as an absolute path.

    Raises OutputError when ``out`` has none of ``suffixes`` (when given), is an input (symlinks and hard links
    are resolved), is an existing folder (a ``.zarr`` store excepted), or its folder cannot be written to. The
    ``folder`` is made now, or only checked to be creatable, or must exist already. Run this before any work
    starts, so a long run does not fail at its last step.
    """
    out = Path(out).expanduser()
    if suffixes is not None:
        suffixes = tuple(suffixes)
        if not out.name.lower().endswith(suffixes):
            raise OutputError(f"{option} {out}: unknown file type {out.suffix or '(no suffix)'!r}; use a name "
                              f"ending in {' or '.join(suffixes)}.")
    for inp in inputs:
        if inp is not None and same_file(out, Path(inp).expanduser()):
            raise OutputError(f"{option} {out} is the input {inp}; inputs are never overwritten: choose another "
                              "output name or folder.")
    if out.is_dir() and not out.name.lower().endswith(".zarr"):
        example = out / ("result" + (suffixes[0] if suffixes else ".tif"))
        raise OutputError(f"{option} {out} is an existing folder; give a file name inside it, e.g. {example}.")
    check_writable_folder(out.parent, option, out, create=folder == "creatable", make=folder == "make")
    return out.absolute()
