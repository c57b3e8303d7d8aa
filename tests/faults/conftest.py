"""Fault-injection fixtures: small real inputs, tiny models, and the table of faults injected and survived.

Each test records ``(command, fault, outcome)`` in the ledger; the table is printed at the end of the run
(``pytest tests/faults -rA`` or any verbosity), so the report can quote it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tifffile

from tests.faults.helpers import run_scopert
from tests.runtime.graphs import conv_stack

STEPS_PER_EPOCH, EPOCHS = 4, 3

_LEDGER: list[tuple[str, str, str, str]] = []


class Ledger:
    def record(self, command: str, fault: str, outcome: str, survived: bool = True) -> None:
        _LEDGER.append((command, fault, "survived" if survived else "NOT survived", outcome))


@pytest.fixture(scope="session")
def ledger() -> Ledger:
    return Ledger()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _LEDGER:
        return
    tr = terminalreporter
    tr.section("faults injected (command x fault -> outcome)")
    for command, fault, verdict, outcome in _LEDGER:
        tr.write_line(f"| {command:<14} | {fault:<38} | {verdict:<12} | {outcome}")
    survived = sum(1 for row in _LEDGER if row[2] == "survived")
    tr.write_line(f"{len(_LEDGER)} faults injected, {survived} survived")


@pytest.fixture(scope="session")
def fault_models(tmp_path_factory) -> Path:
    """A 3D model (apply streams single-channel 3D TIFFs) and a 2D model (planes, movies), both on ORT."""
    root = tmp_path_factory.mktemp("fault_models")
    conv_stack(root / "m3d.onnx", ndim=3, layers=2)
    conv_stack(root / "m2d.onnx", ndim=2, layers=2, divisor=4)
    return root


@pytest.fixture(scope="session")
def em_volume(tmp_path_factory, data_dir) -> Path:
    """24 x 256 x 256 of the ISBI 2012 ssTEM stack, uncompressed: 150 tiles of 8 x 64 x 64."""
    path = tmp_path_factory.mktemp("fault_inputs") / "em.tif"
    stack = tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif")
    tifffile.imwrite(path, stack[:24, :256, :256], photometric="minisblack")
    return path


@pytest.fixture(scope="session")
def w2s_plane(tmp_path_factory, data_dir) -> Path:
    """One 256 x 256 W2S widefield frame: 25 tiles of 64 x 64."""
    path = tmp_path_factory.mktemp("fault_inputs") / "w2s.tif"
    tifffile.imwrite(path, tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")[0, :256, :256])
    return path


@pytest.fixture(scope="session")
def colloid_movie(tmp_path_factory, data_dir) -> Path:
    """40 frames (t, y, x) of the trackpy bulk-water brightfield video, 128 x 128."""
    path = tmp_path_factory.mktemp("fault_inputs") / "movie.tif"
    movie = tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")
    tifffile.imwrite(path, movie[:, :128, :128], imagej=True, metadata={"axes": "TYX"})
    return path


@pytest.fixture(scope="session")
def rcan_config(tmp_path_factory, data_dir) -> Path:
    """A tiny 2D RCAN on three 128 x 128 W2S noisy/clean pairs: 3 epochs of 4 steps, seed 0."""
    root = tmp_path_factory.mktemp("rcan_data")
    noisy = tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")
    clean = tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg400_clean.tif")
    for kind, stack in (("raw", noisy), ("gt", clean)):
        (root / kind).mkdir()
        for i in range(3):
            tifffile.imwrite(root / kind / f"s{i}.tif", stack[i, :128, :128])
    config = {"training_data_dir": {"raw": str(root / "raw"), "gt": str(root / "gt")},
              "input_shape": [32, 32], "epochs": EPOCHS, "steps_per_epoch": STEPS_PER_EPOCH, "num_channels": 4,
              "num_residual_groups": 1, "num_residual_blocks": 1, "channel_reduction": 2, "batch_size": 2,
              "seed": 0}
    path = root / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def rcan_run(rcan_config, tmp_path_factory) -> Path:
    """The run folder of ``scopert train rcan`` without faults: the reference for resumes, the input of export."""
    root = tmp_path_factory.mktemp("rcan_ref")
    run = run_scopert(["train", "rcan", "-c", rcan_config, "-o", root / "run"], root, hook="train_step",
                      count=root / "steps")
    assert run.returncode == 0, run.stderr
    assert int((root / "steps").read_text()) == STEPS_PER_EPOCH * EPOCHS
    return root / "run"
