"""``scopert apply`` under faults: a 3D TIFF that streams slab by slab (150 tiles) and a 2D plane (25 tiles)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from tests.faults.helpers import SIGNALS, expect_clean_failure, interrupt_scopert, leftovers, run_scopert

CASES = {
    "3d": ("m3d.onnx", "em_volume", "8,64,64", 150),
    "2d": ("m2d.onnx", "w2s_plane", "64,64", 25),
}


def _args(models, src, out, case):
    model, _, tile, _ = CASES[case]
    return ["apply", "-m", models / model, "-i", src, "-o", out, "-B", tile, "--backend", "ort"]


@pytest.fixture(scope="module")
def reference(fault_models, em_volume, w2s_plane, tmp_path_factory):
    """Each case's output from a run without faults, and the number of backend calls it made."""
    root = tmp_path_factory.mktemp("apply_ref")
    inputs = {"3d": em_volume, "2d": w2s_plane}
    refs = {}
    for case in CASES:
        out = root / f"{case}.tif"
        run = run_scopert(_args(fault_models, inputs[case], out, case), root, hook="ort", count=root / "calls")
        assert run.returncode == 0, run.stderr
        refs[case] = (tifffile.imread(out), int((root / "calls").read_text()))
    return inputs, refs


def _rerun_equals(fault_models, src, out, case, reference, cwd):
    run = run_scopert(_args(fault_models, src, out, case), cwd)
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(tifffile.imread(out), reference[1][case][0])


def test_reference_runs_call_the_backend_once_per_tile(reference):
    _, refs = reference
    assert {case: calls for case, (_, calls) in refs.items()} == {c: v[3] for c, v in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_backend_raising_mid_volume(case, fault_models, reference, tmp_path, ledger):
    src, out = reference[0][case], tmp_path / "out.tif"
    at = CASES[case][3] // 2
    run = run_scopert(_args(fault_models, src, out, case), tmp_path, hook="ort", at=at, action="raise")
    outcome = expect_clean_failure(run, (1,), "RuntimeError", "injected fault", "-v", absent=(out,),
                                   folder=tmp_path)
    _rerun_equals(fault_models, src, out, case, reference, tmp_path)
    ledger.record(f"apply {case}", f"backend raises at tile {at}", outcome + "; rerun equal")


@pytest.mark.parametrize(("name", "case"), [("SIGINT", "3d"), ("SIGTERM", "2d")])
def test_signal_mid_run(name, case, fault_models, reference, tmp_path, ledger):
    sig, code, word = SIGNALS[name]
    src, out = reference[0][case], tmp_path / "out.tif"
    run = interrupt_scopert(_args(fault_models, src, out, case), tmp_path, sig, at=5, slow=0.05)
    outcome = expect_clean_failure(run, (code,), word, "rerun", absent=(out,), folder=tmp_path)
    assert run.seconds < 10, f"took {run.seconds:.1f} s to stop after {name}"
    _rerun_equals(fault_models, src, out, case, reference, tmp_path)
    ledger.record(f"apply {case}", f"{name} at tile 5", f"{outcome}; stopped in {run.seconds:.2f} s; rerun equal")


@pytest.mark.parametrize("case", list(CASES))
def test_disk_full(case, fault_models, reference, tmp_path, ledger):
    """RLIMIT_FSIZE below the output's size: the write fails with EFBIG (Python ignores SIGXFSZ)."""
    src, out = reference[0][case], tmp_path / "out.tif"
    limit = reference[1][case][0].nbytes // 8
    run = run_scopert(_args(fault_models, src, out, case), tmp_path, fsize=limit)
    outcome = expect_clean_failure(run, (1,), "disk full", "out.tif", absent=(out,), folder=tmp_path)
    _rerun_equals(fault_models, src, out, case, reference, tmp_path)
    ledger.record(f"apply {case}", f"disk full (RLIMIT_FSIZE {limit // 1024} KiB)", outcome + "; rerun equal")


def test_input_deleted_mid_read_completes_from_the_open_file(fault_models, reference, tmp_path, ledger):
    """POSIX keeps an unlinked file's data while it is open: the run finishes with the full result."""
    src = tmp_path / "in.tif"
    shutil.copy(reference[0]["3d"], src)
    out = tmp_path / "out.tif"
    run = run_scopert(_args(fault_models, src, out, "3d"), tmp_path, hook="ort", at=10, action="unlink", target=src)
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(tifffile.imread(out), reference[1]["3d"][0])
    assert leftovers(tmp_path) == []
    ledger.record("apply 3d", "input deleted at tile 10", "exit 0, output equal to the reference (open file kept)")


def test_input_truncated_mid_read_slab_by_slab(fault_models, reference, tmp_path, ledger):
    """A TIFF over apply's in-memory limit is read slab by slab with read() calls: a cut is an InputError."""
    src = tmp_path / "in.tif"
    shutil.copy(reference[0]["3d"], src)
    out = tmp_path / "out.tif"
    run = run_scopert(_args(fault_models, src, out, "3d"), tmp_path, hook="ort", at=10, action="truncate", target=src,
                      apply_memory_limit=100_000)
    outcome = expect_clean_failure(run, (2,), "truncated", "in.tif", absent=(out,), folder=tmp_path)
    shutil.copy(reference[0]["3d"], src)
    _rerun_equals(fault_models, src, out, "3d", reference, tmp_path)
    ledger.record("apply 3d", "input cut to half at tile 10 (slabs)", outcome + "; rerun equal")


def test_input_truncated_mid_read(fault_models, reference, tmp_path, ledger):
    """A TIFF under apply's in-memory limit is read whole with read() calls before the first tile (never
    memory-mapped: a mapped file cut mid-run killed the process with SIGBUS), so a cut at tile 10 cannot
    touch the run: it completes with the output of the intact file."""
    src = tmp_path / "in.tif"
    shutil.copy(reference[0]["3d"], src)
    out = tmp_path / "out.tif"
    run = run_scopert(_args(fault_models, src, out, "3d"), tmp_path, hook="ort", at=10, action="truncate", target=src)
    survived = run.returncode == 0 and "Traceback" not in run.stderr
    ledger.record("apply 3d", "input cut to half at tile 10 (loaded whole)", f"exit {run.returncode}; output equal",
                  survived=survived)
    assert survived, run.stderr
    np.testing.assert_array_equal(tifffile.imread(out), reference[1]["3d"][0])


def test_disk_full_writing_hdf5(fault_models, reference, tmp_path, ledger):
    src, out = reference[0]["3d"], tmp_path / "out.h5"
    run = run_scopert(["apply", "-m", fault_models / "m3d.onnx", "-i", src, "-o", out, "-B", "8,64,64",
                       "--backend", "ort"], tmp_path, fsize=200 * 1024)
    ledger.record("apply 3d", "disk full writing HDF5 (200 KiB)", f"exit {run.returncode}: {run.last_line[:70]}",
                  survived=run.returncode in (1, 2) and "Traceback" not in run.stderr)
    expect_clean_failure(run, (1,), "disk full", "out.h5", absent=(out,), folder=tmp_path)


def test_disk_full_writing_zarr(fault_models, reference, tmp_path, ledger):
    """A Zarr store is a folder of chunk files: a chunk past the limit fails, and the whole store goes."""
    src, out = reference[0]["3d"], tmp_path / "out.zarr"
    args = ["apply", "-m", fault_models / "m3d.onnx", "-i", src, "-o", out, "-B", "8,64,64", "--backend", "ort"]
    run = run_scopert(args, tmp_path, fsize=50 * 1024)
    outcome = expect_clean_failure(run, (1,), "disk full", "out.zarr", absent=(out,), folder=tmp_path)
    assert run_scopert(args, tmp_path).returncode == 0 and out.is_dir()
    ledger.record("apply 3d", "disk full writing Zarr (50 KiB)", outcome + "; rerun exit 0")
