"""Precision ``auto`` (issue 16): bf16 only when the CPU has it AND the card records a passed bf16 gate;
explicit bf16/int8 refused clearly where not allowed; f32 forces f32. CPU capabilities are faked."""

from __future__ import annotations

import onnx
import pytest

from scopert.card import ModelCard
from scopert.errors import ConfigError
from scopert.runtime import load
from scopert.runtime.cpu import CpuCaps
from scopert.runtime.selection.precision import decide
from tests.runtime.graphs import conv_stack

NO_BF16 = CpuCaps("Fake AVX2 CPU", frozenset({"avx2", "fma"}), ("FP32", "INT8"))
BF16 = CpuCaps("Fake bf16 CPU", frozenset({"avx2", "avx512f", "avx512_bf16"}), ("FP32", "BF16"))
PASSED = {"psnr_db": 52.3, "threshold_db": 45.0, "passed": True, "tiles": 4, "bf16_ops": 7}


def _card(bf16=None, int8=None) -> ModelCard:
    card = ModelCard.from_dict({"family": "t", "name": "t", "input": {"name": "input", "axes": "bcyx"},
                                "output": {"name": "output", "axes": "bcyx"}})
    if bf16 is not None:
        card.precision["bf16_gate"] = bf16
    if int8 is not None:
        card.precision["int8_gate"] = int8
    return card


@pytest.mark.parametrize("cpu_bf16, gate, want, words", [
    (True, PASSED, "bf16", "on 4 real tile(s) is 52.3 dB >= 45 dB"),
    (False, PASSED, "fp32", "this CPU has no bf16"),
    (True, None, "fp32", "records no bf16 gate"),
    (True, dict(PASSED, psnr_db=44.9), "fp32", "on 4 real tile(s) is 44.9 dB, below the 45 dB gate"),
    (True, dict(PASSED, bf16_ops=0), "fp32", "ran no op in bf16"),
    # a segmentation is judged by its masks (the INT8 rule): low PSNR on probabilities, same masks -> bf16
    (True, dict(PASSED, psnr_db=39.7, dice_change=0.0021, mask_threshold=0.5), "bf16",
     "Dice change of the masks (> 0.5) measured on 4 real tile(s) is 0.0021 (segmentation output; PSNR 39.7 dB) <= 0.01"),
    (True, dict(PASSED, psnr_db=60.0, dice_change=0.05, mask_threshold=0.5), "fp32", "is 0.0500 (segmentation output"),
])
def test_auto_needs_cpu_and_recorded_gate(cpu_bf16, gate, want, words):
    d = decide("auto", _card(gate), cpu_bf16, "avx512_bf16" if cpu_bf16 else "")
    assert d.precision == want and words in d.reason and not d.refused


def test_explicit_requests():
    assert decide("f32", _card(PASSED), True).precision == "fp32"
    refused = decide("bf16", _card(PASSED), False)
    assert refused.refused and refused.precision == "fp32"
    assert decide("bf16", _card(PASSED), True).precision == "bf16"
    no_gate = decide("int8", _card(), True)
    assert no_gate.refused and "records no INT8 gate" in no_gate.reason
    failed = decide("int8", _card(int8={"metric": "psnr_db", "value": 31.0, "threshold": 40.0, "passed": False,
                                        "file": "m.int8.xml"}), True)
    assert failed.refused and "INT8 gate failed" in failed.reason


def _with_gate(path, gate):
    proto = onnx.load(str(path))
    card = ModelCard.from_json(next(p.value for p in proto.metadata_props if p.key == "scopert.card"))
    card.precision["bf16_gate"] = gate
    card.embed(proto)
    onnx.save(proto, str(path))


def test_load_auto_swaps_to_bf16_only_with_cpu_and_gate(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    path = tmp_path / "c.onnx"
    conv_stack(path, ndim=2)
    monkeypatch.setattr("scopert.runtime.selection.cpu_caps", lambda *a, **k: BF16)
    model = load(path, backend="openvino", precision="auto")
    assert model.backend.info.precision == "fp32" and "records no bf16 gate" in model.backend.info.reason
    with pytest.raises(ConfigError, match="--precision int8 refused"):
        load(path, backend="openvino", precision="int8")
    _with_gate(path, PASSED)
    model = load(path, backend="openvino", precision="auto")
    assert model.backend.info.precision == "bf16" and "gate passed" in model.precision_decision.reason
    assert load(path, backend="openvino", precision="f32").backend.info.precision == "fp32"
    with pytest.raises(ConfigError, match="runs on the OpenVINO backend only"):
        load(path, backend="ort", device="cpu", precision="bf16")
    assert load(path, backend="ort", device="cpu", precision="auto").backend.info.name == "ort"
    monkeypatch.setattr("scopert.runtime.selection.cpu_caps", lambda *a, **k: NO_BF16)
    model = load(path, backend="openvino", precision="auto")
    assert model.backend.info.precision == "fp32" and "this CPU has no bf16" in model.backend.info.reason


def test_cli_info_says_auto_precision_and_export_int8_needs_gates(tmp_path):
    from click.testing import CliRunner

    from scopert.cli import cli

    path = tmp_path / "c.onnx"
    conv_stack(path, ndim=2)
    res = CliRunner().invoke(cli, ["info", str(path)])
    assert res.exit_code == 0 and "precision auto on this CPU" in res.output
    assert "records no bf16 gate" in res.output or "has no bf16" in res.output
    res = CliRunner().invoke(cli, ["export", str(tmp_path), "-o", str(tmp_path / "m.onnx"), "--int8", "--no-cpu-gates"])
    assert res.exit_code != 0 and "drop --no-cpu-gates" in str(res.exception)


def test_export_with_calib_alone_records_the_bf16_gate(tmp_path, data_dir):
    """Issue 24: `scopert export RUN -o m.onnx --calib tile.tif` was refused (--calib needed --fp16); now real tiles
    given alone measure the CPU gates, and --no-cpu-gates skips them."""
    pytest.importorskip("openvino")
    import tifffile
    from click.testing import CliRunner

    from scopert.cli import cli
    from scopert.export.onnx_export import read_card
    from tests.families import IMPORTED

    info = IMPORTED["rcan2d"](tmp_path)
    tile = tmp_path / "tile.tif"
    tifffile.imwrite(tile, tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")[0, :128, :128])
    res = CliRunner().invoke(cli, ["export", str(info.folder), "-o", str(tmp_path / "g.onnx"), "--calib", str(tile)])
    assert res.exit_code == 0, res.output
    gate = read_card(tmp_path / "g.onnx").precision["bf16_gate"]
    assert gate["psnr_db"] is None or gate["psnr_db"] > 0  # measured (None: this CPU has no bf16, and it says so)
    res = CliRunner().invoke(cli, ["export", str(info.folder), "-o", str(tmp_path / "n.onnx"), "--no-cpu-gates"])
    assert res.exit_code == 0 and "bf16_gate" not in read_card(tmp_path / "n.onnx").precision
    res = CliRunner().invoke(cli, ["export", str(info.folder), "-o", str(tmp_path / "x.onnx"), "--calib", str(tile),
                                   "--no-cpu-gates"])
    assert res.exit_code != 0 and "drop --calib or --no-cpu-gates" in str(res.exception)


@pytest.mark.parametrize("gate, text", [
    (PASSED, ", 52.3 dB"),
    (dict(PASSED, dice_change=0.0021, mask_threshold=0.5), ", Dice change 0.0021 (segmentation masks)"),
    ({"metric": "dice_change", "value": 0.004, "threshold": 0.01, "passed": True}, ", Dice change 0.0040"),
    ({"metric": "psnr_db", "value": 41.25, "threshold": 40.0, "passed": True}, ", 41.2 dB"),
])
def test_info_shows_each_gate_in_its_own_unit(gate, text):
    from scopert.commands.info import _gate_value

    assert _gate_value(gate).startswith(text)
