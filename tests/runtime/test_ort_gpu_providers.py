"""ONNX Runtime on the GPU: provider options for the FP16 ONNX, caches in engines/, honest precision reporting."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from scopert.card import Normalization
from scopert.errors import BackendError
from scopert.runtime.backends.ort import OrtBackend, _providers, model_precision, ort_trt_cache_dir
from tests.runtime.graphs import conv_stack


class FakeOrt:
    """What ``_providers`` reads of the onnxruntime module."""

    def __init__(self, available: list[str], version: str = "1.27.0") -> None:
        self._available = available
        self.__version__ = version

    def get_available_providers(self) -> list[str]:
        return list(self._available)


GPU_ORT = FakeOrt(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])


def test_gpu_providers_keep_the_onnx_precision_and_cache_in_engines(tmp_path):
    model = tmp_path / "models" / "net.fp16.onnx"
    model.parent.mkdir()
    conv_stack(model)
    engines = tmp_path / "engines"
    providers = _providers(GPU_ORT, "auto", model, engines)
    (trt_name, trt_opts), (cuda_name, _), cpu = providers
    assert (trt_name, cuda_name, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert trt_opts["trt_fp16_enable"] == "False"  # the FP16 decision is the graph's own; islands stay FP32
    cache = Path(trt_opts["trt_engine_cache_path"])
    assert cache.parent == engines / "ort-trt" and cache.name.startswith("net.fp16-") and cache.name.endswith(
        "-ort1.27.0") and cache.is_dir()
    assert trt_opts["trt_timing_cache_enable"] == "True" and Path(trt_opts["trt_timing_cache_path"]) == cache.parent
    assert not any(p.suffix == ".engine" for p in model.parent.iterdir())  # nothing lands next to the model


def test_engine_cache_folder_follows_model_content_and_ort_version(tmp_path):
    model = tmp_path / "net.onnx"
    conv_stack(model, seed=0)
    first = ort_trt_cache_dir(model, tmp_path, "1.27.0")
    assert ort_trt_cache_dir(model, tmp_path, "1.28.0") != first  # another ORT bundles another TensorRT
    conv_stack(model, seed=1)  # retrained weights, same file name
    assert ort_trt_cache_dir(model, tmp_path, "1.27.0") != first


def test_cuda_without_a_gpu_provider_is_a_clear_error(tmp_path):
    model = tmp_path / "net.onnx"
    conv_stack(model)
    with pytest.raises(BackendError, match="no GPU provider.*onnxruntime-gpu.*--device cpu"):
        _providers(FakeOrt(["CPUExecutionProvider"]), "cuda", model, tmp_path)
    assert _providers(GPU_ORT, "cpu", model, tmp_path) == ["CPUExecutionProvider"]
    assert not (tmp_path / "ort-trt").exists()


def test_fp16_model_is_reported_as_fp16_and_warned_about_on_the_cpu(tmp_path, caplog):
    from scopert.export.precision import convert_fp16

    src = tmp_path / "net.onnx"
    conv_stack(src, normalization=Normalization(kind="percentile"))
    tiles = np.random.default_rng(0).uniform(0, 1, (2, 1, 32, 32)).astype(np.float32)
    res = convert_fp16(src, tmp_path / "net.fp16.onnx", calib_tiles=tiles)
    assert OrtBackend(src, device="cpu").info.precision == "fp32"
    with caplog.at_level(logging.WARNING):
        backend = OrtBackend(res.path, device="cpu")
    assert backend.info.precision == "fp16" and "run the FP32 file" in caplog.text
    out = backend.run(tiles[:1])
    assert out.shape == (1, 1, 32, 32) and np.all(np.isfinite(out))
    assert model_precision({}) == "fp32" and model_precision({"scopert.card": "not json"}) == "fp32"


@pytest.mark.gpu
def test_ort_cuda_runs_the_fp16_onnx_close_to_fp32(tmp_path):
    import onnxruntime as ort

    from scopert.export.precision import convert_fp16

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has no CUDA provider (install onnxruntime-gpu)")
    src = tmp_path / "net.onnx"
    conv_stack(src, normalization=Normalization(kind="percentile"))
    tiles = np.random.default_rng(0).uniform(0, 1, (2, 1, 64, 64)).astype(np.float32)
    res = convert_fp16(src, tmp_path / "net.fp16.onnx", calib_tiles=tiles)
    gpu = OrtBackend(res.path, device="cuda", engines_dir=tmp_path / "engines")
    assert gpu.info.device == "cuda" and gpu.info.precision == "fp16"
    ref = OrtBackend(src, device="cpu").run(tiles)
    got = gpu.run(tiles)
    mse = float(np.mean((got.astype(np.float64) - ref) ** 2))
    assert np.all(np.isfinite(got)) and 10 * np.log10(float(np.ptp(ref)) ** 2 / max(mse, 1e-30)) >= 50


def test_trt_provider_gets_the_tile_plan_profile(tmp_path):
    """Defect 6 (issue 15): without trt_profile_*_shapes the provider rebuilds for every new shape."""
    from scopert.runtime.backends.engine_key import ProfileShapes
    from scopert.runtime.backends.ort import card_trt_profile

    model = tmp_path / "net.onnx"
    card = conv_stack(model, ndim=3, divisor=4)  # halo 3: smallest window round_up(7, 4) = 8
    (_, opts), _, _ = _providers(GPU_ORT, "auto", model, tmp_path / "engines")
    assert opts["trt_profile_min_shapes"] == "input:1x1x8x8x8"
    assert opts["trt_profile_opt_shapes"] == opts["trt_profile_max_shapes"] == "input:4x1x32x256x256"
    assert card_trt_profile(model) == ProfileShapes("input", (1, 1, 8, 8, 8), (4, 1, 32, 256, 256),
                                                    (4, 1, 32, 256, 256)) and card.halo == {"z": 3, "y": 3, "x": 3}
    plan = ProfileShapes("input", (1, 1, 8, 8, 8), (2, 1, 16, 64, 64), (2, 1, 16, 64, 64))
    (_, opts), _, _ = _providers(GPU_ORT, "auto", model, tmp_path / "engines", plan)
    assert opts["trt_profile_max_shapes"] == "input:2x1x16x64x64"  # the caller's plan wins
    bare = tmp_path / "bare.onnx"
    conv_stack(bare, card=False)
    (_, opts), _, _ = _providers(GPU_ORT, "auto", bare, tmp_path / "engines")
    assert "trt_profile_min_shapes" not in opts  # no card, no plan: ORT picks shapes itself
