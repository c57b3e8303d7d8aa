"""The TensorRT builder against fake tensorrt 10.x and 11.x modules: flags, profiles, caches, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scopert.errors import BackendError, InputError
from scopert.export.trt_builder import build_engine
from scopert.runtime.backends.engine_key import GpuInfo
from tests.fakes.fake_tensorrt import make_fake_tensorrt
from tests.runtime.graphs import conv_stack

H100 = ("NVIDIA H100 80GB HBM3", "9.0")


def _gpu(trt, name=H100[0], cc=H100[1]):
    return GpuInfo(name, cc, trt.__version__)


@pytest.fixture()
def model(tmp_path):
    path = tmp_path / "m.onnx"
    conv_stack(path, ndim=3, divisor=4)
    return path


def test_trt10_strongly_typed_profile_and_timing_cache(model, tmp_path):
    trt = make_fake_tensorrt("10.16.1.11")
    out = tmp_path / "engines"
    res = build_engine(model, (8, 64, 64), 4, out_dir=out, trt=trt, gpu=_gpu(trt), opt_level=2, workspace_gb=1)
    rec = trt.recorder
    assert rec.named("create_network") == [("create_network", 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)]
    assert rec.named("set_flag") == []  # never BuilderFlag.FP16 (nor any precision flag)
    assert rec.named("set_shape") == [("set_shape", "input", (1, 1, 4, 4, 4), (4, 1, 8, 64, 64), (4, 1, 8, 64, 64))]
    assert rec.named("set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", 1 << 30)]
    assert rec.named("build")[0][3] == 2
    assert rec.named("create_timing_cache") == [("create_timing_cache", b"")]  # missing cache: created, no error
    assert res.timing_cache_path.exists() and not res.reused and not res.timing_cache_reused
    assert res.engine_path.parent == out and res.card_path.exists()
    # same key: the cached engine is reused without building
    again = build_engine(model, (8, 64, 64), 4, out_dir=out, trt=trt, gpu=_gpu(trt))
    assert again.reused and again.engine_path == res.engine_path and len(rec.named("build")) == 1
    # another batch: another key and engine; the timing cache from the first build is loaded
    other = build_engine(model, (8, 64, 64), 2, out_dir=out, trt=trt, gpu=_gpu(trt))
    assert other.key.digest() != res.key.digest() and other.engine_path != res.engine_path
    assert rec.named("create_timing_cache")[-1] == ("create_timing_cache", b'{"timing_cache": 1}')
    assert other.timing_cache_reused and rec.named("set_timing_cache")[-1] == ("set_timing_cache", 1, False)


def test_engine_key_covers_gpu_version_precision_profile(model, tmp_path):
    trt = make_fake_tensorrt("10.16.1.11")
    a = build_engine(model, (8, 32, 32), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt)).key
    b = build_engine(model, (8, 32, 32), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt, "NVIDIA L4", "8.9")).key
    trt11 = make_fake_tensorrt("11.4.0.106")
    c = build_engine(model, (8, 32, 32), 1, out_dir=tmp_path, trt=trt11, gpu=_gpu(trt11)).key
    d = build_engine(model, (8, 32, 64), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt)).key
    assert len({a.digest(), b.digest(), c.digest(), d.digest()}) == 4
    assert a.precision == "fp32" and len(a.model_sha256) == 64 and a.trt_version == "10.16.1.11"


def test_trt11_has_no_fp16_flag_and_no_network_flags(model, tmp_path):
    trt = make_fake_tensorrt("11.4.0.106")
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    build_engine(model, (8, 64, 64), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt))
    assert trt.recorder.named("create_network") == [("create_network", 0)]
    assert trt.recorder.named("set_flag") == []


def test_old_tensorrt_says_strong_typing_is_unavailable(model, tmp_path):
    trt = make_fake_tensorrt("10.8.0.43")
    with pytest.raises(BackendError, match=r"older than 10.12.*strongly typed.*Upgrade.*ONNX Runtime"):
        build_engine(model, (8, 64, 64), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt))
    assert trt.recorder.named("Builder") == []


def test_parser_error_names_the_node(tmp_path):
    path = tmp_path / "m.onnx"
    conv_stack(path, ndim=2)  # Conv, Relu, ..., Identity
    trt = make_fake_tensorrt("11.4.0.106", unsupported_ops=("Relu",))
    with pytest.raises(InputError, match=r"cannot parse m.onnx: node Relu_1 \(Relu\): No importer"):
        build_engine(path, (64, 64), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt))


def test_corrupt_timing_cache_is_rebuilt_and_bad_tile_is_refused(model, tmp_path):
    trt = make_fake_tensorrt("10.16.1.11")
    first = build_engine(model, (8, 64, 64), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt))
    first.timing_cache_path.write_bytes(b"\x00garbage")
    second = build_engine(model, (8, 64, 64), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt), rebuild=True)
    assert not second.timing_cache_reused and second.timing_cache_path.read_bytes() == b'{"timing_cache": 1}'
    from scopert.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of the model's divisor 4"):
        build_engine(model, (8, 62, 64), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt))
    with pytest.raises(ConfigError, match="3 sizes"):
        build_engine(model, (64, 64), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt))


def test_stale_engine_is_rebuilt(model, tmp_path):
    trt = make_fake_tensorrt("10.16.1.11")
    res = build_engine(model, (8, 64, 64), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt))
    res.engine_path.write_bytes(b"FAKEPLAN{}")  # replaced behind the card's back
    again = build_engine(model, (8, 64, 64), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt))
    assert not again.reused and len(trt.recorder.named("build")) == 2


def test_cli_build_without_tensorrt_exits_2(model, tmp_path):
    code = ("import sys; sys.modules['tensorrt'] = None; sys.argv = ['scopert', 'build', sys.argv[1], '--tile', "
            "'8,64,64']; from scopert.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "TensorRT is not installed" in proc.stderr and "ONNX Runtime runs the model instead" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.gpu
def test_real_build_on_gpu(model, tmp_path):
    res = build_engine(model, (8, 64, 64), 2, out_dir=tmp_path)
    assert res.engine_path.stat().st_size > 0 and res.card_path.exists()
