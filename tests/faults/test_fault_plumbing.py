"""The pieces the fault tests rely on, in-process: disk-full detection, temporaries of killed processes, the
SIGTERM path and -v detection in ``scopert.cli.main``."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from scopert.cli import _verbose
from scopert.errors import OutputError
from scopert.runtime.io.atomic import (DiskFullError, PARTIAL_MARK, atomic_path, atomic_write_bytes,
                                       disk_full_cause, remove_stale_partials)


def test_disk_full_is_found_down_the_cause_chain():
    efbig = OSError(errno.EFBIG, "File too large")
    try:
        try:
            raise efbig
        except OSError as exc:
            raise OutputError("writing x.tif failed") from exc
    except OutputError as wrapped:
        assert disk_full_cause(wrapped) is efbig
    assert disk_full_cause(OSError("65536 requested and 51108 written")) is not None  # numpy's short write
    assert disk_full_cause(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full_cause(ValueError("no")) is None


def test_atomic_write_under_a_file_size_limit_names_the_folder(tmp_path):
    """Python ignores SIGXFSZ, so a write past RLIMIT_FSIZE fails with EFBIG instead of killing the process."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096));"
            "from scopert.runtime.io.atomic import atomic_write_bytes;"
            "atomic_write_bytes(sys.argv[1], b'x' * 100000)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.bin")], capture_output=True, text=True)
    assert proc.returncode == 1  # not -SIGXFSZ: the process survived the limit
    assert "DiskFullError: disk full: cannot write big.bin in " + str(tmp_path) in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_removes_temporaries_of_dead_processes_only(tmp_path):
    dest = tmp_path / "out.tif"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.tif{PARTIAL_MARK}{int(dead.stdout)}"
    alive = tmp_path / f".out.tif{PARTIAL_MARK}{os.getppid()}"  # our parent runs: its writer may be busy
    stale.write_bytes(b"half"), alive.write_bytes(b"busy")
    assert remove_stale_partials(dest) == [stale]
    with atomic_path(dest) as tmp:
        tmp.write_bytes(b"whole")
    assert dest.read_bytes() == b"whole" and alive.exists() and not stale.exists()


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    dest = tmp_path / "out.bin"
    atomic_write_bytes(dest, b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"ne")
            raise KeyboardInterrupt
    assert dest.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with pytest.raises(DiskFullError, match=r"disk full: cannot write out.bin in .*No space left"):
        with atomic_path(dest) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert dest.read_bytes() == b"old"


@pytest.mark.parametrize(("argv", "verbose"), [
    (["-v", "apply"], True), (["-vv", "apply"], True), (["--verbose", "train"], True),
    (["apply", "-v"], False), (["apply", "-m", "x.onnx"], False), (["--version"], False),
])
def test_verbose_is_the_groups_option(argv, verbose):
    assert _verbose(argv) is verbose
