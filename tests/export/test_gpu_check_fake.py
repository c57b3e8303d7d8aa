"""``doctor --gpu-check`` against fake tensorrt + fake ``cuda.bindings.runtime``: the engine is compared with FP32.

The fake engine executes the engine's own ONNX on ONNX Runtime (CPU) inside the fake CUDA stream, so an FP16
engine really differs from the FP32 graph by FP16 weight rounding; comparing with the FP16 graph itself would
give an infinite PSNR.
"""

from __future__ import annotations

import numpy as np
import pytest

from scopert.card import Normalization
from scopert.errors import ConfigError
from scopert.export.gpu_check import find_fp32_reference, run_gpu_check
from scopert.runtime.backends.cuda_adapter import CudaRuntime
from tests.fakes.fake_cudart import FakeCudaRuntimeModule
from tests.fakes.fake_tensorrt import make_fake_tensorrt, onnxruntime_executor
from tests.runtime.graphs import conv_stack


@pytest.fixture()
def fp16_model(tmp_path, data_dir):
    import shutil

    from scopert.export.precision import convert_fp16

    src = tmp_path / "net.onnx"
    conv_stack(src, ndim=2, normalization=Normalization(kind="percentile"))
    calib = tmp_path / "calib.tif"
    shutil.copy(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif", calib)
    res = convert_fp16(src, tmp_path / "net.fp16.onnx", [calib], tiles=2)
    return src, res.path, calib


def _check(model_path, calib, tmp_path, **kw):
    rt = FakeCudaRuntimeModule()
    trt = make_fake_tensorrt("11.4.0.106", rt, executor=onnxruntime_executor(rt))
    return run_gpu_check(model_path, [calib], tile=(64, 64), batch=2, repeats=3, out_dir=tmp_path / "engines",
                         trt=trt, cuda=CudaRuntime(rt), **kw)


def test_gpu_check_compares_the_fp16_engine_with_the_fp32_onnx_from_the_card(fp16_model, tmp_path):
    """Defect 1: the reference is the FP32 export the FP16 card names, and the report says so."""
    src, fp16, calib = fp16_model
    (tmp_path / "renamed.fp16.onnx").write_bytes(fp16.read_bytes())  # found from the card, not by its name
    report = _check(tmp_path / "renamed.fp16.onnx", calib, tmp_path)
    assert report["reference_onnx"] == str(src) and "card" in report["reference_found_by"]
    assert report["precision"] == "fp16" and report["tf32"] is False and report["profiles"] == 2
    psnr = report["psnr_db_vs_ort_fp32"]
    assert np.isfinite(psnr) and 40 <= psnr < 150 and report["verdict"] == "PASS"  # FP16 vs FP32: finite
    assert report["nonfinite"] == 0 and report["gpu_ms_per_batch_h2d_compute_d2h_median"] > 0


def test_reference_option_and_missing_reference(fp16_model, tmp_path):
    src, fp16, calib = fp16_model
    from scopert.export.onnx_export import read_card

    card = read_card(fp16)
    assert find_fp32_reference(fp16, card, src) == (src, "--reference")
    with pytest.raises(ConfigError, match="holds FP16 tensors.*FP32 export"):
        find_fp32_reference(fp16, card, fp16)
    assert find_fp32_reference(src, read_card(src))[1] == "the model itself (FP32)"
    src.write_bytes(src.read_bytes() + b"\x00")  # the FP32 file changed after the FP16 export
    alone = tmp_path / "alone" / "x.fp16.onnx"
    alone.parent.mkdir()
    alone.write_bytes(fp16.read_bytes())
    with pytest.raises(ConfigError, match="FP32 export was not found.*--reference FP32.onnx"):
        find_fp32_reference(alone, card)


def test_gpu_outputs_saved_then_compared_on_the_cpu(fp16_model, tmp_path):
    """--gpu-check --save-outputs on the (fake) GPU; --compare-saved on the CPU gives the same numbers."""
    from click.testing import CliRunner

    from scopert.cli import cli
    from scopert.errors import InputError
    from scopert.export.gpu_check import compare_saved

    src, fp16, calib = fp16_model
    saved = tmp_path / "runs" / "gpu.json"
    report = _check(fp16, calib, tmp_path, save_outputs=saved)
    assert report["saved_outputs"] == str(saved) and report["polygraphy_compare"] == "PASSED"
    (tmp_path / "cpu").mkdir()
    moved = tmp_path / "cpu" / "gpu.json"  # another machine: the saved file and the FP32 export only
    moved.write_bytes(saved.read_bytes())
    (tmp_path / "cpu" / src.name).write_bytes(src.read_bytes())
    later = compare_saved(moved)
    for key in ("psnr_db_vs_ort_fp32", "max_abs_error", "nonfinite", "polygraphy_compare", "verdict"):
        assert later[key] == report[key], key
    assert later["gpu"] == report["gpu"] and later["precision"] == "fp16"
    res = CliRunner().invoke(cli, ["doctor", "--compare-saved", str(moved)])
    assert res.exit_code == 0 and "verdict: PASS" in res.output and "polygraphy_compare: PASSED" in res.output

    # bad input: a reference from another model, a file that is not a saved run; nothing written
    other = tmp_path / "other.onnx"
    conv_stack(other, ndim=2, seed=3, normalization=Normalization(kind="percentile"))
    before = sorted(p.name for p in (tmp_path / "cpu").iterdir())
    with pytest.raises(InputError, match="another model.*--reference"):
        compare_saved(moved, reference_onnx=other)
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "scopert", "doctor", "--compare-saved", str(moved), "--reference",
                          str(other)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "another model" in res.stderr and "Traceback" not in res.stderr
    not_saved = tmp_path / "cpu" / "notes.json"
    not_saved.write_text('{"hello": 1}')
    with pytest.raises(InputError, match="not a saved GPU run"):
        compare_saved(not_saved)
    assert sorted(p.name for p in (tmp_path / "cpu").iterdir()) == sorted(before + ["notes.json"])


def test_a_failing_engine_fails_polygraphy_and_our_gate(fp16_model, tmp_path):
    """An engine whose outputs are wrong (the fake's own kernel, not the model) fails both comparisons."""
    from scopert.export.gpu_check import compare_saved

    src, fp16, calib = fp16_model
    rt = FakeCudaRuntimeModule()
    trt = make_fake_tensorrt("11.4.0.106", rt)  # no ONNX executor: computes 2*mean+1, not the network
    saved = tmp_path / "bad.json"
    report = run_gpu_check(src, [calib], tile=(64, 64), batch=2, repeats=2, out_dir=tmp_path / "engines", trt=trt,
                           cuda=CudaRuntime(rt), save_outputs=saved)
    assert report["polygraphy_compare"] == "FAILED" and report["verdict"].startswith("FAIL")
    assert report["psnr_db_vs_ort_fp32"] < 40
    assert compare_saved(saved, reference_onnx=src)["verdict"].startswith("FAIL")
