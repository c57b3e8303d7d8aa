"""Atomic outputs and output-path checks: nothing is ever half-written, and no input is overwritten.

Writers write to a hidden temporary name in the destination folder (``.NAME.partial-<pid>``) and
rename it onto the destination only when they finished without error. The rename is atomic within one file
system, so a reader (or a resumed batch run) sees either the complete old file, the complete
new file, or nothing.

Imports only the standard library and ``scopert.errors``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from scopert.errors import OutputError

log = logging.getLogger(__name__)

PARTIAL_MARK = ".partial-"


def partial_path(dest: str | os.PathLike[str]) -> Path:
    """The temporary name used while ``dest`` is written: hidden, same folder, tagged with the pid."""
    dest = Path(dest)
    return dest.parent / f".{dest.name}{PARTIAL_MARK}{os.getpid()}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _fsync_file(path: Path) -> None:
    """Flush a finished file to disk before the rename, so a crash cannot leave an empty 'complete' file."""
    if path.is_file():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
        _remove(tmp)  # left by an earlier crashed process that had the same pid
    try:
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise OutputError(f"the writer for {dest} produced no file; this is a bug, please report it")
        _fsync_file(tmp)
        if tmp.is_dir() and dest.is_dir():
            # os.replace cannot put a folder over a non-empty folder: move the old one aside first.
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise
    log.debug("wrote %s", dest)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def check_output_path(
    out: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]] = (),
    *,
    create_folder: bool = True,
) -> Path:
    """Check that ``out`` can be written and is none of ``inputs``; return it as an absolute path.

    Raises OutputError when ``out`` is an input (symlinks and hard links are resolved), is an existing
    folder, or its folder cannot be created (``create_folder``) or written to. Run this before
    any work starts, so a long run does not fail at its last step.
    """
    out = Path(out).expanduser()
    for inp in inputs:
        inp = Path(inp).expanduser()
        if _same_file(out, inp):
            raise OutputError(
                f"output {out} is the input {inp}; inputs are never overwritten: "
                "choose another output name or folder"
            )
    if out.is_dir() and not out.name.lower().endswith(".zarr"):
        raise OutputError(f"output {out} is an existing folder; give a file name inside it, e.g. {out / 'result.tif'}")
    folder = out.parent
    if create_folder:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(
                f"cannot create the output folder {folder}: {e.strerror or e}; "
                "choose an output path in a folder you can write to"
            ) from e
    if not folder.is_dir():
        raise OutputError(
            f"the output folder {folder} does not exist or is not a folder; "
            "create it first or choose another output path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"the output folder {folder} is not writable; choose a folder you can write to "
            "or fix its permissions"
        )
    return out.absolute()
