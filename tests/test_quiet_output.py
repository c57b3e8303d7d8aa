"""No progress-bar flood when stderr is not a terminal: a piped `scopert train` writes no carriage returns and a
handful of lines, while a terminal still gets the live tqdm bar."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import tifffile

from scopert.progress import LogProgress, progress_bar


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_lines_in_a_pipe(caplog):
    bar = progress_bar(10, "epoch 1/1", stream=FakeTerminal())
    assert type(bar).__name__ == "tqdm"
    bar.close()
    quiet = progress_bar(100, "epoch 1/1", stream=io.StringIO(), min_interval_s=0.0)
    assert isinstance(quiet, LogProgress)
    with caplog.at_level(logging.INFO, logger="scopert.progress"):
        for _ in range(100):
            quiet.update(1)
            quiet.set_postfix({"loss": "0.1"})
    lines = [r.getMessage() for r in caplog.records if r.name == "scopert.progress"]
    assert len(lines) == 4 and lines[0].startswith("epoch 1/1: 25/100 (25%)") and "loss=0.1" in lines[-1]
    caplog.clear()
    rate_limited = progress_bar(100, "slow", stream=io.StringIO(), min_interval_s=3600.0)
    with caplog.at_level(logging.INFO, logger="scopert.progress"):
        for _ in range(100):
            rate_limited.update(1)
    assert not [r for r in caplog.records if r.name == "scopert.progress"]  # short loops stay silent


def test_piped_train_writes_no_carriage_returns(tmp_path, data_dir):
    noisy = tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")
    clean = tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg400_clean.tif")
    for kind, stack in (("raw", noisy), ("gt", clean)):
        (tmp_path / kind).mkdir()
        for i in range(2):
            tifffile.imwrite(tmp_path / kind / f"s{i}.tif", stack[i, :64, :64])
    epochs, steps = 3, 10
    config = {"training_data_dir": {"raw": str(tmp_path / "raw"), "gt": str(tmp_path / "gt")},
              "input_shape": [32, 32], "epochs": epochs, "steps_per_epoch": steps, "num_channels": 4,
              "num_residual_groups": 1, "num_residual_blocks": 1, "channel_reduction": 2, "batch_size": 2, "seed": 0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    res = subprocess.run([sys.executable, "-m", "scopert", "train", "rcan", "-c", str(tmp_path / "config.json"),
                          "-o", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    assert "\r" not in out
    # tqdm wrote a '\r' frame per step (30 here; splitlines() splits at '\r' too); now: a few log lines about the
    # data, one line per epoch, the run folder
    lines = out.splitlines()
    assert len(lines) < 15, out
    assert sum("epoch" in line for line in lines) == epochs
