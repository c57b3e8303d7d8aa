"""`scopert apply` on real images, and every bad input the runtime spine lists: exit 2, a message that
names the problem, no traceback, and nothing written."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile

from scopert.errors import ConfigError, InputError
from scopert.runtime import load
from tests.runtime.graphs import conv_stack


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "scopert", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    conv_stack(root / "m2d.onnx", ndim=2, layers=2, divisor=4)
    conv_stack(root / "m3d.onnx", ndim=3, layers=2)
    conv_stack(root / "nocard.onnx", ndim=2, layers=2, card=False)
    return root


@pytest.fixture(scope="module")
def w2s_slice(tmp_path_factory, data_dir):
    path = tmp_path_factory.mktemp("img") / "w2s0.tif"
    tifffile.imwrite(path, tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")[0, :200, :180])
    return path


def expect_clean_error(res, *words, out=None):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert "error:" in res.stderr
    for w in words:
        assert w.lower() in res.stderr.lower(), (w, res.stderr)
    if out is not None:
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}*")), "no partial file may remain"


def test_apply_real_image_with_ground_truth(models, w2s_slice, tmp_path, data_dir):
    gt = tmp_path / "gt.tif"
    tifffile.imwrite(gt, tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg400_clean.tif")[0, :200, :180])
    out = tmp_path / "out.tif"
    res = run_cli("apply", "-m", models / "m2d.onnx", "-i", w2s_slice, "-o", out, "-g", gt, "-b", "16", "-B", "64,64",
                  "--precision", "f32")
    assert res.returncode == 0, res.stderr
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        data = tif.asarray()
    assert data.shape == (3, 200, 180) and data.dtype == np.uint16
    # the restored channel equals the API's prediction (crop stitching, tile-invariant model)
    model = load(models / "m2d.onnx")
    raw = tifffile.imread(w2s_slice)
    expect = model.predict(raw, tile=(64, 64))
    np.testing.assert_array_equal(data[1], np.clip(65535 * expect, 0, 65535).astype(np.uint16))


def test_apply_folder_mode_and_hdf5(models, tmp_path, data_dir):
    src = tmp_path / "in"
    src.mkdir()
    stack = tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif")
    for i in range(2):
        tifffile.imwrite(src / f"em{i}.tif", stack[i * 3:(i + 1) * 3, :64, :64], photometric="minisblack")
    res = run_cli("apply", "-m", models / "m3d.onnx", "-i", src, "-o", tmp_path / "out", "-B", "8,32,32")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["em0.tif", "em1.tif"]
    h5 = tmp_path / "vol.h5"
    with h5py.File(h5, "w") as f:
        f["raw"] = stack[:4, :48, :48]
    res = run_cli("apply", "-m", models / "m3d.onnx", "-i", h5, "-o", tmp_path / "pred.h5", "-B", "8,32,32")
    assert res.returncode == 0, res.stderr
    with h5py.File(tmp_path / "pred.h5") as f:
        assert f["predictions"].shape == (4, 48, 48)


def test_wrong_number_of_axes(models, tmp_path, w2s_slice):
    """A 3D model cannot restore a single 2D image (a 2D model on a stack runs plane by plane instead)."""
    out = tmp_path / "o.tif"
    res = run_cli("apply", "-m", models / "m3d.onnx", "-i", w2s_slice, "-o", out)
    expect_clean_error(res, "states axes 'yx'", "do not fit this model", "--axes", out=out)


@pytest.mark.parametrize("dtype", [np.complex64, bool])
def test_unsupported_dtype(models, dtype):
    with pytest.raises(InputError, match="dtype"):
        load(models / "m2d.onnx").predict(np.zeros((32, 32), dtype))


def test_nan_and_inf(models, tmp_path):
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    image[3, 5] = np.nan
    image[7, 7] = np.inf
    path, out = tmp_path / "nan.tif", tmp_path / "o.tif"
    tifffile.imwrite(path, image)
    expect_clean_error(run_cli("apply", "-m", models / "m2d.onnx", "-i", path, "-o", out), "nan", out=out)


def test_empty_array(models):
    with pytest.raises(InputError, match="empty"):
        load(models / "m2d.onnx").predict(np.zeros((0, 32), np.float32))


def test_tile_smaller_than_twice_the_halo_and_not_divisible(models, w2s_slice, tmp_path):
    out = tmp_path / "o.tif"
    expect_clean_error(run_cli("apply", "-m", models / "m2d.onnx", "-i", w2s_slice, "-o", out, "-B", "4,4"),
                       "2x the halo", out=out)
    expect_clean_error(run_cli("apply", "-m", models / "m2d.onnx", "-i", w2s_slice, "-o", out, "-B", "30,30"),
                       "not divisible by the model's divisor 4", out=out)
    with pytest.raises(ConfigError):
        load(models / "m2d.onnx").predict(np.zeros((64, 64), np.float32), tile=(4, 4))


def test_truncated_and_corrupt_tiff(models, tmp_path, data_dir):
    raw = (data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif").read_bytes()
    cut, bogus, out = tmp_path / "cut.tif", tmp_path / "bogus.tif", tmp_path / "o.tif"
    cut.write_bytes(raw[: len(raw) // 2])
    bogus.write_text("not a tiff at all")
    expect_clean_error(run_cli("apply", "-m", models / "m2d.onnx", "-i", cut, "-o", out), "truncated", out=out)
    expect_clean_error(run_cli("apply", "-m", models / "m2d.onnx", "-i", bogus, "-o", out), str(bogus.name), out=out)


def test_hdf5_without_the_dataset(models, tmp_path):
    path, out = tmp_path / "x.h5", tmp_path / "o.tif"
    with h5py.File(path, "w") as f:
        f["volume"] = np.zeros((4, 32, 32), np.float32)
    expect_clean_error(run_cli("apply", "-m", models / "m3d.onnx", "-i", path, "-o", out), "volume", out=out)


def test_output_equal_to_input(models, w2s_slice):
    before = w2s_slice.read_bytes()
    res = run_cli("apply", "-m", models / "m2d.onnx", "-i", w2s_slice, "-o", w2s_slice)
    expect_clean_error(res, "input")
    assert w2s_slice.read_bytes() == before, "the input must never be modified"


def test_unwritable_output_folder(models, w2s_slice, tmp_path):
    blocker = tmp_path / "afile.txt"
    blocker.write_text("x")
    res = run_cli("apply", "-m", models / "m2d.onnx", "-i", w2s_slice, "-o", blocker / "out.tif")
    expect_clean_error(res)


def test_ground_truth_of_another_shape(models, w2s_slice, tmp_path):
    gt, out = tmp_path / "gt.tif", tmp_path / "o.tif"
    tifffile.imwrite(gt, np.zeros((50, 50), np.uint8))
    expect_clean_error(run_cli("apply", "-m", models / "m2d.onnx", "-i", w2s_slice, "-o", out, "-g", gt),
                       "ground truth", "shape", out=out)


def test_model_file_that_is_not_onnx(w2s_slice, tmp_path):
    fake, out = tmp_path / "model.onnx", tmp_path / "o.tif"
    fake.write_text("{\"not\": \"onnx\"}")
    expect_clean_error(run_cli("apply", "-m", fake, "-i", w2s_slice, "-o", out), "not an onnx model", out=out)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01garbage" * 10)
    expect_clean_error(run_cli("apply", "-m", garbage, "-i", w2s_slice, "-o", out), "not a readable onnx", out=out)


def test_onnx_without_card_needs_axes(models, w2s_slice, tmp_path):
    out = tmp_path / "o.tif"
    expect_clean_error(run_cli("apply", "-m", models / "nocard.onnx", "-i", w2s_slice, "-o", out), "--axes", out=out)
    res = run_cli("apply", "-m", models / "nocard.onnx", "-i", w2s_slice, "-o", out, "--axes", "bcyx")
    assert res.returncode == 0, res.stderr
    assert out.exists()


def test_interrupted_write_leaves_no_file(models, tmp_path, monkeypatch):
    """A failure inside the writer (here: the model raising mid-run) leaves nothing at the destination."""
    from scopert.runtime.apply import ApplyOptions, apply_file

    volume = np.random.default_rng(1).integers(0, 4000, (20, 64, 64), dtype=np.uint16)
    src, out = tmp_path / "v.tif", tmp_path / "o.tif"
    tifffile.imwrite(src, volume)  # uncompressed 3D: the streamed path
    model = load(models / "m3d.onnx")
    calls = {"n": 0}
    real = model.backend.run

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(batch)

    monkeypatch.setattr(model.backend, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        apply_file(model, src, out, opts=ApplyOptions(tile=(8, 32, 32)))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.tif")]
    monkeypatch.setattr(model.backend, "run", real)
    result = apply_file(model, src, out, opts=ApplyOptions(tile=(8, 32, 32)))
    assert result.streamed and out.exists()
    written = tifffile.imread(out)
    assert written.shape == (20, 2, 64, 64)
    np.testing.assert_allclose(written[:, 1], model.predict(volume, tile=(8, 32, 32)), atol=1e-6)
