"""``scopert train rcan`` under faults, then the same command again: the resumed run ends bit for bit where a
run without faults ends (same seed: the trainer saves the torch RNG, the patch sampler, optimizer and scheduler
state with each epoch), and no checkpoint is ever half-written."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch

from tests.faults.conftest import STEPS_PER_EPOCH
from tests.faults.helpers import SIGNALS, expect_clean_failure, interrupt_scopert, leftovers, run_scopert


def _train(config, run_dir):
    return ["train", "rcan", "-c", config, "-o", run_dir]


def _metrics(run_dir):
    """metrics.csv without the wall-clock column."""
    with open(run_dir / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def _weights(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["epoch"], state["model_state_dict"]


@pytest.fixture(scope="module")
def reference(rcan_run):
    return rcan_run


def _checkpoints_complete(run_dir):
    """Every checkpoint under its final name loads, and metrics.csv holds exactly the epochs last.pt saw."""
    assert leftovers(run_dir) == []
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists():
        epoch, _ = _weights(last)
        assert [int(r["epoch"]) for r in _metrics(run_dir)] == list(range(1, epoch + 1))
        return epoch
    return 0


def _resume_equals_reference(config, run_dir, reference):
    run = run_scopert(_train(config, run_dir), run_dir.parent)
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("best.pt", "last.pt"):
        (e_ref, w_ref), (e_got, w_got) = _weights(reference / "checkpoints" / name), _weights(
            run_dir / "checkpoints" / name)
        assert e_got == e_ref
        assert w_got.keys() == w_ref.keys()
        for key in w_ref:
            assert torch.equal(w_got[key], w_ref[key]), (name, key)
    assert _metrics(run_dir) == _metrics(reference)


@pytest.mark.parametrize("name", ["SIGINT", pytest.param("SIGTERM", marks=pytest.mark.slow)])
def test_signal_mid_epoch_then_resume(name, rcan_config, reference, tmp_path, ledger):
    sig, code, word = SIGNALS[name]
    run_dir = tmp_path / "run"
    at = STEPS_PER_EPOCH + 2  # second step of epoch 2; from then on each step takes 0.5 s more
    run = interrupt_scopert(_train(rcan_config, run_dir), tmp_path, sig, at=at, hook="train_step", slow=0.5)
    outcome = expect_clean_failure(run, (code,), word, "resume")
    assert _checkpoints_complete(run_dir) == 1  # epoch 1 saved whole, epoch 2 not at all
    _resume_equals_reference(rcan_config, run_dir, reference)
    ledger.record("train", f"{name} at step {at} (epoch 2)", f"{outcome}; resume: weights and metrics identical")


def test_disk_full_while_saving_then_resume(rcan_config, reference, tmp_path, ledger):
    """A 16 KiB file-size limit: best.pt (8 KB) fits, last.pt (29 KB, with the optimizer state) does not."""
    run_dir = tmp_path / "run"
    run = run_scopert(_train(rcan_config, run_dir), tmp_path, fsize=16 * 1024)
    outcome = expect_clean_failure(run, (1,), "disk full", "last.pt", str(run_dir / "checkpoints"),
                                   absent=(run_dir / "checkpoints" / "last.pt",))
    assert _checkpoints_complete(run_dir) == 0
    _resume_equals_reference(rcan_config, run_dir, reference)
    ledger.record("train", "disk full at the first last.pt", outcome + "; rerun: weights and metrics identical")


@pytest.mark.slow
def test_step_raising_then_resume(rcan_config, reference, tmp_path, ledger):
    run_dir = tmp_path / "run"
    at = 2 * STEPS_PER_EPOCH + 1
    run = run_scopert(_train(rcan_config, run_dir), tmp_path, hook="train_step", at=at, action="raise")
    outcome = expect_clean_failure(run, (1,), "injected fault")
    assert _checkpoints_complete(run_dir) == 2
    _resume_equals_reference(rcan_config, run_dir, reference)
    ledger.record("train", f"training step raises at step {at}", outcome + "; resume: identical")


@pytest.mark.slow
def test_training_data_deleted_mid_run_does_not_matter(rcan_config, reference, tmp_path, ledger):
    """The pairs are loaded before the first step, so deleting one mid-run changes nothing."""
    data = tmp_path / "data"
    shutil.copytree(rcan_config.parent, data)
    config = data / "config.json"
    config.write_text(config.read_text().replace(str(rcan_config.parent), str(data)))
    run_dir = tmp_path / "run"
    run = run_scopert(_train(config, run_dir), tmp_path, hook="train_step", at=2, action="unlink",
                      target=data / "raw" / "s1.tif")
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("best.pt", "last.pt"):
        _, w_ref = _weights(reference / "checkpoints" / name)
        _, w_got = _weights(run_dir / "checkpoints" / name)
        assert all(torch.equal(w_got[k], w_ref[k]) for k in w_ref)
    ledger.record("train", "a training image deleted at step 2", "exit 0, weights identical (data in memory)")
