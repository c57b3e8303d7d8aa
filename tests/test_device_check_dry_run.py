"""CI runs issue 15's device check as a dry run: every step that needs no GPU, the rest "skipped: no GPU"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_device_check_dry_run_passes_and_says_what_it_skipped(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for step in ("1a cuda-python adapter", "1b tiled predict", "2 FP16 graphs", "3 torch FP16 timing",
                 "4 TensorRT: defects 1, 3, 4"):
        assert f"{step}" in out and "fail" not in out.split(step)[1].splitlines()[0]
    assert "skipped: no GPU" in out and "FAIL" not in out
    assert "returns the input exactly" in out and "slots in flight: 2 of 2" in out
    assert "gpu-check compares with the FP32 ONNX" in out and "two slots in flight give the same outputs" in out
    report = (tmp_path / "gpu_dry-run.md").read_text()
    assert "| 2 FP16 graphs in float16 vs ORT FP32 | pass |" in report and "skipped: no GPU" in report
    assert (tmp_path / "gpu_dry-run.json").exists()
