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


# ---- each decision logged once (issue 20, item 6) ----------------------------------------------------------------
def _scopert(*args):
    return subprocess.run([sys.executable, "-m", "scopert", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_a_plain_apply_says_each_decision_once(tmp_path, data_dir):
    from tests.runtime.graphs import conv_stack

    conv_stack(tmp_path / "m.onnx", ndim=2, global_mean=True)  # tile-variant: blend, so the overlap rule applies
    src = data_dir / "em_misc/n2v_sem_demo_test_input.tif"
    res = _scopert("apply", "-m", tmp_path / "m.onnx", "-i", src, "-o", tmp_path / "o.tif", "-O", "1,1", "-B", "256,256")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 0, res.stderr
    # backend, precision, the model in one line, the overlap correction per axis, the result (was 3x the backend,
    # the precision twice, each overlap correction twice and the result twice)
    assert len(lines) <= 6, lines
    assert sum("chosen because" in ln or "fastest CPU engine" in ln for ln in lines) <= 1, lines
    assert [ln.split("axis ")[1][:3] for ln in lines if "below 2x the halo" in ln] == ["'y'", "'x'"], lines


def test_a_truncated_tiff_is_one_line(tmp_path, data_dir):
    from tests.runtime.graphs import conv_stack

    conv_stack(tmp_path / "m.onnx", ndim=3)
    cut = tmp_path / "cut.tif"
    cut.write_bytes((data_dir / "em_misc/cylindra_13pf_MT.tif").read_bytes()[:20000])
    res = _scopert("apply", "-m", tmp_path / "m.onnx", "-i", cut, "-o", tmp_path / "o.tif")
    assert res.returncode == 2
    assert [ln for ln in res.stderr.splitlines() if ln.startswith(("ERROR", "error"))] == [
        next(ln for ln in res.stderr.splitlines() if ln.startswith("error: ") and "truncated or corrupt" in ln)]


def test_info_says_what_the_model_is_before_any_json(tmp_path):
    import json

    from tests.runtime.graphs import conv_stack

    conv_stack(tmp_path / "m.onnx", ndim=3)
    res = _scopert("info", tmp_path / "m.onnx")
    lines = res.stdout.splitlines()
    assert res.returncode == 0 and lines[0].startswith("model ") and len(lines) < 15, lines
    assert any(ln.startswith("halo ") for ln in lines) and "{" not in res.stdout
    card = json.loads(_scopert("info", tmp_path / "m.onnx", "--json").stdout)
    assert card["input"]["axes"] == "bczyx"
