"""``scopert stream --replay`` under faults: 40 real frames at 10 fps through a 2D model, block backpressure
(so every frame is processed and a rerun's output is comparable frame by frame)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from tests.faults.helpers import SIGNALS, expect_clean_failure, interrupt_scopert, leftovers, run_scopert

FPS = 10  # 40 frames take 4 s: a replay that ignored Ctrl-C would keep feeding for seconds


def _args(models, movie, out):
    return ["stream", "--replay", movie, "--fps", FPS, "-m", models / "m2d.onnx", "-o", out, "--backend", "ort",
            "--on-full", "block"]


@pytest.fixture(scope="module")
def reference(fault_models, colloid_movie, tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_ref")
    run = run_scopert(_args(fault_models, colloid_movie, root / "ref.tif"), root)
    assert run.returncode == 0, run.stderr
    frames = tifffile.imread(root / "ref.tif")
    assert frames.shape == (40, 128, 128)
    return frames


def _rerun_equals(fault_models, movie, out, reference, cwd):
    run = run_scopert(_args(fault_models, movie, out), cwd)
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(tifffile.imread(out), reference)


def test_backend_raising_mid_stream(fault_models, colloid_movie, reference, tmp_path, ledger):
    out = tmp_path / "out.tif"
    run = run_scopert(_args(fault_models, colloid_movie, out), tmp_path, hook="ort", at=20, action="raise")
    outcome = expect_clean_failure(run, (1,), "injected fault", absent=(out,), folder=tmp_path)
    _rerun_equals(fault_models, colloid_movie, out, reference, tmp_path)
    ledger.record("stream", "backend raises at frame 20", outcome + "; rerun equal")


@pytest.mark.parametrize("name", list(SIGNALS))
def test_signal_stops_the_replay_at_once(name, fault_models, colloid_movie, reference, tmp_path, ledger):
    sig, code, word = SIGNALS[name]
    out = tmp_path / "out.tif"
    run = interrupt_scopert(_args(fault_models, colloid_movie, out), tmp_path, sig, at=3, slow=0.0)
    outcome = expect_clean_failure(run, (code,), word, absent=(out,), folder=tmp_path)
    # 37 frames were still to come at 10 fps (3.7 s): the camera side must stop, not play them out
    assert run.seconds < 2.0, f"took {run.seconds:.1f} s to stop after {name}"
    ledger.record("stream", f"{name} at frame 3", f"{outcome}; stopped in {run.seconds:.2f} s")


def test_disk_full(fault_models, colloid_movie, reference, tmp_path, ledger):
    out = tmp_path / "out.tif"
    run = run_scopert(_args(fault_models, colloid_movie, out), tmp_path, fsize=reference.nbytes // 4)
    outcome = expect_clean_failure(run, (1,), "disk full", "out.tif", str(tmp_path), absent=(out,), folder=tmp_path)
    _rerun_equals(fault_models, colloid_movie, out, reference, tmp_path)
    ledger.record("stream", f"disk full (RLIMIT_FSIZE {reference.nbytes // 4096} KiB)", outcome + "; rerun equal")


def test_input_cut_mid_replay_does_not_matter(fault_models, colloid_movie, reference, tmp_path, ledger):
    """The movie is read into memory before the first frame is offered (a camera's frames are in RAM too), so
    cutting the file mid-replay changes nothing; it used to be a memmap, and the cut killed it with SIGBUS."""
    movie = tmp_path / "movie.tif"
    shutil.copy(colloid_movie, movie)
    out = tmp_path / "out.tif"
    run = run_scopert(_args(fault_models, movie, out), tmp_path, hook="ort", at=3, action="truncate", target=movie)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    np.testing.assert_array_equal(tifffile.imread(out), reference)
    assert leftovers(tmp_path) == []
    ledger.record("stream", "input cut to half at frame 3", "exit 0, output equal (movie already in memory)")


def test_truncated_movie_is_refused(fault_models, colloid_movie, tmp_path, ledger):
    movie = tmp_path / "movie.tif"
    movie.write_bytes(colloid_movie.read_bytes()[: colloid_movie.stat().st_size // 2])
    out = tmp_path / "out.tif"
    run = run_scopert(_args(fault_models, movie, out), tmp_path)
    outcome = expect_clean_failure(run, (2,), "movie.tif", absent=(out,), folder=tmp_path)
    ledger.record("stream", "input truncated before the run", outcome)
