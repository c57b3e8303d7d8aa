"""bf16 is earned: refused on a CPU without bf16 (faked), refused without a measurement, gated at the
threshold on a recorded PSNR (a segmentation on its masks' Dice), the record keyed by model hash and CPU and reused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from scopert.runtime import load
from scopert.checksum import sha256_file
from scopert.runtime.cpu import CpuCaps
from scopert.runtime.selection.precision import decide_precision, gate_path
from scopert.runtime.compare import psnr_db
from tests.runtime.graphs import conv_stack

pytest.importorskip("openvino")

NO_BF16 = CpuCaps("Fake CPU", frozenset({"avx2", "fma"}), ("FP32", "INT8"))
BF16 = CpuCaps("Fake bf16 CPU", frozenset({"avx2", "avx512f", "avx512_bf16"}), ("FP32", "BF16"))


@pytest.fixture
def model2d(tmp_path):
    path = tmp_path / "conv2d.onnx"
    conv_stack(path, ndim=2, layers=3, channels=8)
    return path


def test_psnr_numbers():
    ref = np.linspace(0, 1, 1000)
    assert psnr_db(ref, ref) == float("inf")
    assert psnr_db(ref, ref + 0.01) == pytest.approx(40.0, abs=1e-6)


def test_bf16_refused_on_cpu_without_bf16(model2d):
    gate = decide_precision(model2d, "bf16", tiles=[np.zeros((1, 1, 32, 32), np.float32)], caps=NO_BF16)
    assert gate.precision == "fp32"
    assert "does not report bf16" in gate.reason and "Fake CPU" in gate.reason and "running in f32" in gate.reason
    assert not gate_path(model2d).exists()


def test_bf16_refused_without_real_tiles_or_record(model2d):
    gate = decide_precision(model2d, "bf16", tiles=None, caps=BF16)
    assert gate.precision == "fp32" and "no accuracy gate has been measured" in gate.reason


def _record(model2d, psnr, bf16_ops=40):
    from scopert.runtime.selection.precision import _engine_version

    key = f"{sha256_file(model2d)}|{BF16.key}|{_engine_version()}"
    gate_path(model2d).write_text(json.dumps({"records": {key: {
        "psnr_db": psnr, "tiles": 4, "bf16_ops": bf16_ops, "runtime_precisions": {"bf16": bf16_ops}}}}))


def test_recorded_gate_is_reused_and_thresholded(model2d):
    _record(model2d, 47.5)
    passed = decide_precision(model2d, "bf16", caps=BF16)
    assert passed.precision == "bf16" and passed.reused and passed.psnr_db == 47.5
    refused = decide_precision(model2d, "bf16", caps=BF16, threshold_db=50.0)
    assert refused.precision == "fp32" and "47.5 dB, below the 50 dB gate" in refused.reason
    # another CPU has no record: no reuse across machines
    other = CpuCaps("Other bf16 CPU", frozenset({"amx_bf16"}), ())
    assert decide_precision(model2d, "bf16", caps=other).precision == "fp32"


def test_a_segmentation_is_gated_by_its_masks_and_an_older_psnr_record_is_measured_again(model2d, data_dir):
    _record(model2d, 30.0)  # recorded before segmentations were judged by Dice: PSNR only
    assert decide_precision(model2d, "bf16", caps=BF16).precision == "fp32"  # a restoration: PSNR decides
    stale = decide_precision(model2d, "bf16", caps=BF16, mask_threshold=0.5)  # no tiles: nothing to judge masks on
    assert stale.precision == "fp32" and "no accuracy gate has been measured" in stale.reason
    img = tifffile.imread(data_dir / "stardist_nuclei_2d" / "stardist_dsb2018_img2d.tif")
    with load(model2d, backend="ort") as model:
        tiles = model.sample_tiles(img, n=2, tile=(128, 128))
    gate = decide_precision(model2d, "bf16", tiles=tiles, caps=BF16, mask_threshold=0.5)
    records = json.loads(gate_path(model2d).read_text())["records"]
    rec = next(iter(records.values()))
    assert len(records) == 1 and rec["mask_threshold"] == 0.5 and 0 <= rec["dice_change"] <= 1
    if rec["bf16_ops"]:
        assert "Dice change of the masks (> 0.5) measured on 2 real tile(s)" in gate.reason
        assert gate.precision == ("bf16" if rec["dice_change"] <= 0.01 else "fp32")


def test_the_imported_unet_earns_bf16_by_dice_on_its_own_volume(tmp_path, data_dir):
    """Issue 24: a pytorch-3dunet segmentation (softmax probabilities) was refused bf16 by PSNR (39.7 dB) although
    its masks agree; the gate measured on the run's own tiles now uses the Dice rule, as the INT8 gate does."""
    import h5py

    from scopert.runtime.cpu import cpu_caps
    from tests.families import exported

    path = exported("unet", tmp_path)
    with h5py.File(data_dir / "ovule_3d_seg" / "pytorch3dunet_sample_patch.h5", "r") as f:
        vol = f["raw"][:32, :96, :96]
    with load(path, precision="auto", calibration=vol) as model:
        decision = model.precision_decision
    if not cpu_caps().bf16:
        assert decision.precision == "fp32" and "no bf16" in decision.reason
        return
    rec = next(iter(json.loads(gate_path(path).read_text())["records"].values()))
    assert rec["mask_threshold"] == 0.5 and "Dice change of the masks" in decision.reason, decision.reason
    assert decision.precision == ("bf16" if rec["bf16_ops"] and rec["dice_change"] <= 0.01 else "fp32")


def test_gate_measures_real_tiles_and_records(model2d, data_dir, monkeypatch):
    img = tifffile.imread(data_dir / "stardist_nuclei_2d" / "stardist_dsb2018_img2d.tif")
    model = load(model2d, backend="openvino")
    tiles = model.sample_tiles(img, n=3, tile=(256, 256))  # the default tile holds this image whole
    assert len(tiles) == 3 and tiles[0].shape[:2] == (1, 1)
    gate = decide_precision(model2d, "bf16", tiles=tiles, caps=BF16)
    from scopert.runtime.selection.precision import _engine_version

    rec = json.loads(gate_path(model2d).read_text())["records"][f"{sha256_file(model2d)}|{BF16.key}|{_engine_version()}"]
    assert rec["tiles"] == 3
    if rec["bf16_ops"] == 0:  # this CPU has no bf16 kernels: OpenVINO ran f32, and the gate says so
        assert gate.precision == "fp32" and "no op in bf16" in gate.reason
    else:
        assert rec["psnr_db"] > 30 and gate.precision == ("bf16" if rec["psnr_db"] >= 45 else "fp32")


@pytest.mark.parametrize("movie", ["trackpy_bulk_water/bulk_water_first40.tif", "isbi2012_em/isbi2012_train_volume.tif"])
def test_gate_tiles_of_a_stack_under_a_2d_model_are_planes(model2d, data_dir, movie):
    """Issue 20: a 2D model over a time-lapse or z-stack crashed in np.pad (a 2-axis plan on a 3-axis array)."""
    stack = tifffile.imread(data_dir / movie)[:6]
    with load(model2d, backend="ort") as model:
        tiles = model.sample_tiles(stack, n=4)
    assert len(tiles) == 4
    assert all(t.shape[:2] == (1, 1) and t.ndim == 4 for t in tiles)  # (b, c, y, x): one plane each
    assert len({float(t.mean()) for t in tiles}) > 1  # spread over the stack, not one tile four times


def test_load_with_bf16_on_cpu_without_bf16_is_refused_but_auto_continues(model2d, data_dir, monkeypatch):
    """Issue 16: an explicit --precision bf16 the CPU cannot honour is a clear refusal; auto runs f32."""
    from scopert.errors import ConfigError

    monkeypatch.setattr("scopert.runtime.selection.cpu_caps", lambda *a, **k: NO_BF16)
    img = tifffile.imread(data_dir / "stardist_nuclei_2d" / "stardist_dsb2018_img2d.tif")
    with pytest.raises(ConfigError, match="refused: bf16: this CPU has no bf16"):
        load(model2d, backend="openvino", precision="bf16", calibration=img)
    model = load(model2d, backend="openvino", precision="auto", calibration=img)
    assert model.backend.info.precision == "fp32"
    assert model.precision_decision.precision == "fp32" and "this CPU has no bf16" in model.backend.info.reason
    assert model.predict(img[:128, :128], tile=64).shape == (128, 128)


def test_bf16_on_a_stack_then_auto_reuses_the_recorded_gate(model2d, data_dir, tmp_path):
    """Issue 20: `--precision bf16` on a 2D model over a stack crashed in np.pad; and the gate it recorded beside
    the model was ignored by a later `--precision auto` (f32 at twice the time)."""
    import subprocess
    import sys

    from scopert.runtime.cpu import cpu_caps

    if not cpu_caps().bf16:
        pytest.skip("this CPU has no bf16: the gate cannot be measured here (the refusal is tested above)")
    stack = data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif"

    def apply(out, *extra):
        return subprocess.run([sys.executable, "-m", "scopert", "apply", "-m", str(model2d), "-i", str(stack), "-o",
                               str(tmp_path / out), *extra], capture_output=True, text=True, timeout=300)

    first = apply("bf16.tif", "--precision", "bf16")
    assert first.returncode == 0, first.stderr
    assert gate_path(model2d).is_file()
    second = apply("auto.tif")
    assert second.returncode == 0, second.stderr
    expected = "bf16" if "bf16 earned" in first.stderr else "fp32"
    assert f"precision {expected} for conv2d.onnx (auto requested)" in second.stderr, second.stderr
    if expected == "bf16":
        assert "recorded on 4 real tile(s)" in second.stderr
