"""`scopert bench`: camera-rate verdicts, the tile auto-tuner, and the command end to end."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from scopert.commands.bench import SCMOS_BYTES_PER_S, camera_verdicts, default_shape
from scopert.runtime import load
from scopert.runtime.tools.bench import tune_tile
from scopert.runtime.cpu import cpu_caps
from tests.runtime.graphs import conv_stack


def test_default_shape_follows_the_model_axes():
    assert default_shape("zyx") == (64, 512, 512)
    assert default_shape("yx") == (2048, 2048)
    assert default_shape("tyx") == (64, 1024, 1024)


def test_camera_verdicts_compare_16_bit_bytes_with_the_rates():
    scmos = "sCMOS 2048^2 16-bit 100 fps (838.9 MB/s)"
    fast = camera_verdicts(SCMOS_BYTES_PER_S / 2 * 1.25, None)  # 16-bit: 2 bytes per voxel
    assert fast[scmos] == "keeps up (1.25x)"
    slow = camera_verdicts(SCMOS_BYTES_PER_S / 2 / 4, 100.0)
    assert slow[scmos].startswith("does NOT keep up (0.250x; needs 4.0x faster)")
    assert slow["user rate (100 MB/s)"] == "keeps up (2.10x)"


def test_tune_tile_picks_the_row_with_the_most_output_per_second(tmp_path):
    conv_stack(tmp_path / "m.onnx", ndim=2, layers=4, divisor=8)  # halo 4
    model = load(tmp_path / "m.onnx", backend="ort", device="cpu")
    res = tune_tile(model, {"y": 300, "x": 500}, scales=(0.25, 0.5, 1.0), batches=(1, 2), repeats=1)  # default: whole
    rows = res["rows"]
    assert len(rows) == 6 and res["pick"] == max(rows, key=lambda r: r["core_voxels_per_s"])
    for r in rows:
        assert all(n % 8 == 0 and n > 2 * 4 for n in r["tile"].values())
        assert r["tile"]["y"] <= 312  # never beyond the image plus its halo (divisor-rounded)
    assert {tuple(r["tile"].values()) for r in rows} == {(80, 128), (160, 256), (312, 512)}


def test_bench_command_tunes_then_reports_efficiency_and_verdicts(tmp_path):
    conv_stack(tmp_path / "m.onnx", ndim=2, layers=2)
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "scopert", "bench", str(tmp_path / "m.onnx"), "--shape", "200,300",
                          "--tune", "--compare", "--backend", "ort", "--repeats", "1", "--rate", "50", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "auto-tuner pick" in res.stdout
    result = json.loads(out.read_text())
    pick = result["tile_sweep"]["pick"]
    assert result["tile"] == list(pick["tile"].values()) and result["batch"] == pick["batch"]
    assert 0 < result["pipeline_efficiency"] <= 1.5 and result["tiles"] >= 1
    assert set(result["camera_verdicts"]) == {"sCMOS 2048^2 16-bit 100 fps (838.9 MB/s)", "user rate (50 MB/s)"}
    engines = result["engines"]
    assert engines["engines"]["ort_fp32"]["x_ort"] == 1.0 and engines["tile"] == pick["tile"]
    if platform.machine() in ("x86_64", "AMD64"):  # the cpu extra installs OpenVINO there
        assert engines["engines"]["openvino_f32"]["psnr_vs_ort_db"] >= 100  # same FP32 math, other kernels
        assert engines["engines"]["openvino_f32"]["seconds"] > 0
        if not cpu_caps(ask_openvino=False).bf16:
            assert "no bf16" in engines["notes"]["openvino_bf16"]


@pytest.mark.parametrize("args, words", [
    (["--shape", "0,300"], "empty"),
    (["--shape", "200,300", "-B", "7,7"], "halo"),
    (["--shape", "64,200,300"], "3 dimensions"),  # a 3D shape for a 2D model
])
def test_bench_bad_tile_or_shape_is_a_clear_error(tmp_path, args, words):
    conv_stack(tmp_path / "m.onnx", ndim=2, layers=4)
    res = subprocess.run([sys.executable, "-m", "scopert", "bench", str(tmp_path / "m.onnx"), "--backend", "ort",
                          *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr
