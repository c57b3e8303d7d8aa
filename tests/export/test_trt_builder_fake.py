"""The TensorRT builder against fake tensorrt 10.x and 11.x modules: flags, TF32, profiles, caches, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
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
    assert rec.named("create_network") == [("create_network", 1 << 1)]  # STRONGLY_TYPED is bit 1 on 10.x
    assert rec.named("set_flag") == []  # never BuilderFlag.FP16 (nor any precision flag)
    assert rec.named("clear_flag") == [("clear_flag", "TF32")]
    # min: batch 1 and the smallest window the tiler sends, round_up(2*halo + 1, divisor) = round_up(7, 4)
    profile = ("set_shape", "input", (1, 1, 8, 8, 8), (4, 1, 8, 64, 64), (4, 1, 8, 64, 64))
    assert rec.named("set_shape") == [profile, profile]  # one identical profile per in-flight slot
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
    assert rec.named("create_timing_cache")[-1] == ("create_timing_cache",
                                                    b'{"timing_cache": 1, "device": "NVIDIA H100 80GB HBM3"}')
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
    assert trt.recorder.named("set_flag") == [] and trt.recorder.named("clear_flag") == [("clear_flag", "TF32")]


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
    assert not second.timing_cache_reused and json.loads(second.timing_cache_path.read_bytes())["timing_cache"] == 1
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


def test_profile_minimum_follows_the_tile_plan(tmp_path):
    """Defect 6: min = round_up(2*halo + 1, divisor) per axis (here halo 3, divisor 4 -> 8), capped at the tile;
    and it is the smallest window the tiler really sends (an image of 1 voxel along each axis)."""
    from scopert.export.onnx_export import read_card
    from scopert.runtime.tiling import plan_tiles

    path = tmp_path / "m.onnx"
    conv_stack(path, ndim=3, divisor=4)
    trt = make_fake_tensorrt("11.4.0.106")
    res = build_engine(path, (8, 32, 64), 2, out_dir=tmp_path, trt=trt, gpu=_gpu(trt))
    assert res.key.profile.min == (1, 1, 8, 8, 8) and res.key.profile.opt == res.key.profile.max == (2, 1, 8, 32, 64)
    card = read_card(path)
    tiny = plan_tiles({"z": 1, "y": 1, "x": 1}, {"z": 8, "y": 32, "x": 64}, card.halo, card.input.divisor,
                      {}, "crop")
    assert tiny.tile_shape == (8, 8, 8)
    from scopert.errors import ConfigError

    with pytest.raises(ConfigError, match="not larger than 2x the halo"):
        build_engine(path, (4, 32, 64), 2, out_dir=tmp_path, trt=trt, gpu=_gpu(trt))


def test_fp16_onnx_builds_a_strongly_typed_fp16_plan_on_10x_and_11x(tmp_path):
    from scopert.card import Normalization
    from scopert.export.precision import convert_fp16
    from tests.fakes.fake_tensorrt import MAGIC

    src = tmp_path / "m.onnx"
    conv_stack(src, ndim=2, normalization=Normalization(kind="percentile"))
    tiles = np.random.default_rng(0).uniform(0, 1, (2, 1, 32, 32)).astype(np.float32)
    fp16 = convert_fp16(src, tmp_path / "m.fp16.onnx", calib_tiles=tiles).path
    for version in ("10.16.1.11", "11.4.0.106"):
        trt = make_fake_tensorrt(version)
        res = build_engine(fp16, (64, 64), 1, out_dir=tmp_path / version, trt=trt, gpu=_gpu(trt))
        plan = json.loads(res.engine_path.read_bytes()[len(MAGIC):])
        assert res.key.precision == "fp16" and plan["strongly_typed"] and plan["precision"] == "fp16"
    weak = make_fake_tensorrt("10.16.1.11").Builder(None).create_network(0)
    assert not weak.strongly_typed  # what a 10.x build without the flag would have been: FP32


def test_failed_build_steps_are_named(model, tmp_path, caplog):
    """Defect 7: -1 from add_optimization_profile, False from set_timing_cache, None plans, no GPU."""
    from scopert.errors import RunError

    trt = make_fake_tensorrt("10.16.1.11", profile_fails=True)
    with pytest.raises(RunError, match=r"build step add_optimization_profile failed.*profile 0"):
        build_engine(model, (8, 64, 64), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt))
    assert trt.recorder.named("build") == []
    trt = make_fake_tensorrt("10.16.1.11", no_gpu=True)
    with pytest.raises(BackendError, match="could not start its builder.*CUDA initialization.*ONNX Runtime"):
        build_engine(model, (8, 64, 64), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt))
    trt = make_fake_tensorrt("10.16.1.11", builder_fails=True)
    with pytest.raises(RunError, match="build_serialized_network returned None"):
        build_engine(model, (8, 64, 64), 1, out_dir=tmp_path, trt=trt, gpu=_gpu(trt))
    # a timing cache from another GPU under this GPU's file name: refused (False), replaced by a new one
    other = make_fake_tensorrt("10.16.1.11", device_name="NVIDIA A100-SXM4-80GB")
    first = build_engine(model, (8, 64, 64), 1, out_dir=tmp_path / "a", trt=other, gpu=_gpu(other))
    trt = make_fake_tensorrt("10.16.1.11")
    plan_cache = tmp_path / "b" / first.timing_cache_path.name
    plan_cache.parent.mkdir()
    plan_cache.write_bytes(first.timing_cache_path.read_bytes())
    res = build_engine(model, (8, 64, 64), 1, out_dir=tmp_path / "b", trt=trt, gpu=_gpu(trt))
    assert [c[1:] for c in trt.recorder.named("set_timing_cache")] == [(1, False), (0, False)]
    assert not res.timing_cache_reused and "does not match" in caplog.text
    assert json.loads(plan_cache.read_bytes())["device"] == "NVIDIA H100 80GB HBM3"


@pytest.mark.gpu
def test_real_build_on_gpu(model, tmp_path):
    res = build_engine(model, (8, 64, 64), 2, out_dir=tmp_path)
    assert res.engine_path.stat().st_size > 0 and res.card_path.exists()


def _parse_polygraphy(command: str):
    """Parse a `polygraphy convert` line with Polygraphy's own argument groups (no TensorRT needed to parse)."""
    import argparse
    import shlex

    from polygraphy.tools.args import TrtConfigArgs, TrtLoadNetworkArgs
    from polygraphy.tools.convert.convert import Convert

    words = shlex.split(command)
    assert words[:2] == ["polygraphy", "convert"]
    tool = Convert()
    parser = argparse.ArgumentParser()
    tool.setup_parser(parser.add_subparsers())
    args = parser.parse_args(words[1:])
    for group in tool.arg_groups.values():
        group.parse(args)
    return args, tool.arg_groups[TrtConfigArgs], tool.arg_groups[TrtLoadNetworkArgs]


@pytest.mark.parametrize("version", ["10.16.1.11", "11.4.0.106"])
def test_show_polygraphy_prints_the_same_build_for_nvidias_tool(model, tmp_path, version):
    from scopert.export.trt_builder import show_polygraphy

    trt = make_fake_tensorrt(version)
    out = tmp_path / "engines"
    command = show_polygraphy(model, (8, 64, 64), 4, out_dir=out, workspace_gb=1, opt_level=2, trt=trt, gpu=_gpu(trt))
    assert trt.recorder.calls == []  # printing the command calls no TensorRT API
    res = build_engine(model, (8, 64, 64), 4, out_dir=out, trt=trt, gpu=_gpu(trt), opt_level=2, workspace_gb=1)
    args, config, network = _parse_polygraphy(command)
    assert args.output == str(res.engine_path) and args.convert_to == "trt"
    p = res.key.profile
    want = {p.input_name: (list(p.min), list(p.opt), list(p.max))}
    assert config.profile_dicts == [want] * res.key.profiles == [want, want]  # one profile per in-flight slot
    set_shapes = [c for c in trt.recorder.named("set_shape")]
    assert len(set_shapes) == len(config.profile_dicts)
    assert not config.tf32 and not res.key.tf32  # TF32 off in both
    assert config.builder_optimization_level == 2 and config.load_timing_cache == str(res.timing_cache_path)
    assert {str(k).split(".")[-1].upper(): v for k, v in config.memory_pool_limits.items()} == {"WORKSPACE": 1 << 30}
    # strongly typed: the flag on 10.x (as create_network got it), implicit on 11.x (no flag there either)
    assert bool(network.strongly_typed) == version.startswith("10.")
    assert ("create_network", (1 << 1) if version.startswith("10.") else 0) in trt.recorder.calls


def test_show_polygraphy_on_a_machine_without_tensorrt(model, tmp_path):
    from click.testing import CliRunner

    from scopert.cli import cli

    out = tmp_path / "store"
    res = CliRunner().invoke(cli, ["build", str(model), "--tile", "8,64,64", "--batch", "2", "-o", str(out),
                                   "--show-polygraphy"])
    assert res.exit_code == 0, res.output
    line = res.output.strip().splitlines()[-1]
    args, config, _ = _parse_polygraphy(line)
    assert len(config.profile_dicts) == 2 and config.profile_dicts[0]["input"][2][0] == 2  # max batch 2
    assert not any(p.suffix == ".engine" for p in out.rglob("*"))  # nothing built
