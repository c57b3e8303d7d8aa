"""``scopert export`` under faults: the ONNX file appears whole or not at all, and a rerun writes the same bytes
(without the CPU gates, whose record carries the time it was measured)."""

from __future__ import annotations

import shutil

import pytest

from tests.faults.helpers import SIGNALS, expect_clean_failure, interrupt_scopert, run_scopert


@pytest.fixture(scope="module")
def reference(rcan_run, tmp_path_factory):
    """The exported bytes of a run without faults (the card names the file, so every test writes model.onnx)."""
    root = tmp_path_factory.mktemp("export_ref")
    run = run_scopert(["export", rcan_run, "-o", root / "model.onnx", "--no-cpu-gates"], root, hook="ort", count=root / "calls")
    assert run.returncode == 0, run.stderr
    assert int((root / "calls").read_text()) >= 2  # ORT vs PyTorch on at least two shapes
    return (root / "model.onnx").read_bytes()


def _rerun_equals(run_dir, out, reference, cwd):
    run = run_scopert(["export", run_dir, "-o", out, "--no-cpu-gates"], cwd)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.read_bytes() == reference


def test_backend_raising_during_verification(rcan_run, reference, tmp_path, ledger):
    out = tmp_path / "model.onnx"
    run = run_scopert(["export", rcan_run, "-o", out, "--no-cpu-gates"], tmp_path, hook="ort", at=2, action="raise")
    outcome = expect_clean_failure(run, (1,), "injected fault", absent=(out,), folder=tmp_path)
    _rerun_equals(rcan_run, out, reference, tmp_path)
    ledger.record("export", "ORT raises on the 2nd check shape", outcome + "; rerun: same bytes")


@pytest.mark.parametrize("name", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow)])
def test_signal_during_verification(name, rcan_run, reference, tmp_path, ledger):
    sig, code, word = SIGNALS[name]
    out = tmp_path / "model.onnx"
    run = interrupt_scopert(["export", rcan_run, "-o", out, "--no-cpu-gates"], tmp_path, sig, at=1, slow=2.0)
    outcome = expect_clean_failure(run, (code,), word, absent=(out,), folder=tmp_path)
    ledger.record("export", f"{name} during the ORT check", f"{outcome}; stopped in {run.seconds:.2f} s")


def test_disk_full(rcan_run, reference, tmp_path, ledger):
    out = tmp_path / "model.onnx"
    run = run_scopert(["export", rcan_run, "-o", out, "--no-cpu-gates"], tmp_path, fsize=len(reference) // 2)
    outcome = expect_clean_failure(run, (1,), "disk full", "model.onnx", str(tmp_path), absent=(out,),
                                   folder=tmp_path)
    _rerun_equals(rcan_run, out, reference, tmp_path)
    ledger.record("export", f"disk full (RLIMIT_FSIZE {len(reference) // 2} B)", outcome + "; rerun: same bytes")


def test_truncated_checkpoint(rcan_run, reference, tmp_path, ledger):
    run_dir = tmp_path / "run"
    shutil.copytree(rcan_run, run_dir)
    best = run_dir / "checkpoints" / "best.pt"
    size = best.stat().st_size
    with open(best, "r+b") as fh:
        fh.truncate(size // 2)
    out = tmp_path / "model.onnx"
    run = run_scopert(["export", run_dir, "-o", out, "--no-cpu-gates"], tmp_path)
    outcome = expect_clean_failure(run, (2,), "best.pt", absent=(out,))
    shutil.copy(rcan_run / "checkpoints" / "best.pt", best)
    run = run_scopert(["export", run_dir, "-o", out, "--no-cpu-gates"], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    # the card records the checkpoint's path, which is another folder here; all else is the same
    got, want = _without_source_path(out.read_bytes()), _without_source_path(reference)
    assert got == want
    ledger.record("export", "best.pt truncated to half", outcome + "; rerun: same graph and card")


def _without_source_path(data: bytes) -> bytes:
    import json

    import onnx

    from scopert.card import METADATA_KEY

    model = onnx.load_from_string(data)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            card = json.loads(prop.value)
            card["source"].pop("path")
            prop.value = json.dumps(card, sort_keys=True)
    return model.SerializeToString()
