"""A folder run interrupted part way resumes: complete outputs are kept and skipped, the rest is redone, and the
result equals an uninterrupted run. Outputs are atomic, so an output that exists is complete."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from scopert.card import Normalization
from tests.faults.helpers import default_sigint
from tests.runtime.graphs import conv_stack

N = 4  # images in the folder


def _apply(model, src, out, *extra):
    return [sys.executable, "-m", "scopert", "apply", "-m", str(model), "-i", str(src), "-o", str(out),
            "-B", "8,64,64", "--backend", "ort", *extra]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_folder_run_resumes(tmp_path, data_dir, sig):
    model = tmp_path / "m.onnx"
    conv_stack(model, ndim=3, layers=3, channels=8, normalization=Normalization(kind="percentile"))
    em = tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif")
    src = tmp_path / "in"
    src.mkdir()
    for i in range(N):
        tifffile.imwrite(src / f"em{i}.tif", em[i * 5:(i + 1) * 5, :192, :192], imagej=True, metadata={"axes": "ZYX"})
    reference = tmp_path / "reference"
    assert subprocess.run(_apply(model, src, reference), capture_output=True, timeout=600).returncode == 0

    out = tmp_path / "out"
    child = subprocess.Popen(_apply(model, src, out), stderr=subprocess.PIPE, text=True,
                             preexec_fn=default_sigint)
    deadline = time.monotonic() + 300
    while not (out.exists() and any(p.suffix == ".tif" for p in out.iterdir())):  # one file done, the next running
        assert child.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.05)
    child.send_signal(sig)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode in (130, 143), stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()[-1]) < 300
    done = sorted(p.name for p in out.iterdir())
    assert all(not name.startswith(".") for name in done), f"temporaries left behind: {done}"
    assert 1 <= len(done) < N, done

    rerun = subprocess.run(_apply(model, src, out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done)} of {N} outputs" in rerun.stderr  # the complete ones were skipped, not redone
    for i in range(N):
        got = tifffile.imread(out / f"em{i}.tif")
        want = tifffile.imread(reference / f"em{i}.tif")
        assert np.array_equal(got, want), i
    # --overwrite redoes everything
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert subprocess.run(_apply(model, src, out, "--overwrite"), capture_output=True).returncode == 0
    assert all(p.stat().st_mtime_ns != before[p.name] for p in out.iterdir())
