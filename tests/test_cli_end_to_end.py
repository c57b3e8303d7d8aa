"""The README's path through the CLI on real data: train rcan -> export -> apply -> info, and the
training bad inputs that surface at the command line (exit 2, clear message, no traceback)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import tifffile


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "scopert", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def _pairs(tmp_path, data_dir, n=3):
    noisy = tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")
    clean = tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg400_clean.tif")
    for kind, stack in (("raw", noisy), ("gt", clean)):
        (tmp_path / kind).mkdir()
        for i in range(n):
            tifffile.imwrite(tmp_path / kind / f"s{i}.tif", stack[i, :128, :128])
    return noisy


def test_train_export_apply(tmp_path, data_dir):
    noisy = _pairs(tmp_path, data_dir)
    config = {"training_data_dir": {"raw": str(tmp_path / "raw"), "gt": str(tmp_path / "gt")},
              "input_shape": [32, 32], "epochs": 2, "steps_per_epoch": 3, "num_channels": 4,
              "num_residual_groups": 1, "num_residual_blocks": 1, "channel_reduction": 2, "batch_size": 2,
              "seed": 0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    res = run_cli("train", "rcan", "-c", tmp_path / "config.json", "-o", tmp_path / "runs" / "tiny")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "runs" / "tiny" / "metrics.csv").exists()
    res = run_cli("export", tmp_path / "runs" / "tiny", "-o", tmp_path / "tiny.onnx")
    assert res.returncode == 0, res.stderr
    card = json.loads(run_cli("info", tmp_path / "tiny.onnx", "--json").stdout)
    assert card["family"] == "rcan" and card["verification"]["onnx_vs_torch"]["max_abs_error"] <= 1e-4
    assert card["normalization"]["pmin"] == 2.0 and card["normalization"]["pmax"] == 99.9
    # issue 24: a plain export of a run with training data measures the CPU gates on it (INT8 where nncf is installed)
    gates = card["precision"]
    assert gates["bf16_gate"]["tiles"] >= 1 and "bf16_gate" in res.stderr
    if importlib.util.find_spec("nncf") and importlib.util.find_spec("openvino"):
        assert gates["int8_gate"]["metric"] == "psnr_db" and np.isfinite(gates["int8_gate"]["value"])
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, noisy[5, :100, :90])
    res = run_cli("apply", "-m", tmp_path / "tiny.onnx", "-i", src, "-o", tmp_path / "out.tif", "-B", "64,64")
    assert res.returncode == 0, res.stderr
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.shape == (2, 100, 90) and np.isfinite(out).all()


def test_typo_in_config_is_named(tmp_path, data_dir):
    _pairs(tmp_path, data_dir, n=1)
    (tmp_path / "config.json").write_text(json.dumps({
        "training_data_dir": {"raw": str(tmp_path / "raw"), "gt": str(tmp_path / "gt")}, "num_chanels": 8}))
    res = run_cli("train", "rcan", "-c", tmp_path / "config.json", "-o", tmp_path / "run")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "num_chanels" in res.stderr and "num_channels" in res.stderr
    assert not (tmp_path / "run" / "run.json").exists()


def test_export_of_a_folder_without_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"family": "rcan", "model": {"ndim": 2}}))
    res = run_cli("export", tmp_path / "run", "-o", tmp_path / "x.onnx")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "checkpoint" in res.stderr
    assert not (tmp_path / "x.onnx").exists()
