"""The four `scopert apply` failures a new user met (issue 11), as that user ran them, on real files.

Each test failed before the fix: a small 3D TIFF crashed in the normalization of the lazily read volume; HDF5 to
Zarr ran the whole volume and then refused the default `-f imagej`; an output without a suffix failed only after
the whole run; a 2D model refused a 2D time-lapse instead of restoring it frame by frame. And a bad output path
must fail in well under 2 s on a volume that takes at least 30 s to restore.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from scopert.card import Normalization
from scopert.runtime import load
from scopert.runtime.io import read_image
from tests.runtime.graphs import conv_stack


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "scopert", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def timed_cli(*args) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, wall seconds, CPU seconds of the child). On a busy shared CI machine the wall time of a short
    command is mostly waiting for a core; the CPU time is what the command itself spent."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = run_cli(*args)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return res, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    norm = Normalization(kind="percentile", pmin=2.0, pmax=99.9)
    conv_stack(root / "m3d.onnx", ndim=3, layers=2, normalization=norm)
    conv_stack(root / "m2d.onnx", ndim=2, layers=2, divisor=4, normalization=norm)
    return root


def test_small_3d_tiff_is_restored(models, tmp_path, data_dir):
    """1. A 3D TIFF under 4 M voxels (a cryo-ET sub-tomogram, ImageJ, uncompressed) crashed with a ValueError."""
    src = data_dir / "em_misc" / "cylindra_13pf_MT.tif"
    out = tmp_path / "out.tif"
    res = run_cli("apply", "-m", models / "m3d.onnx", "-i", src, "-o", out, "-B", "16,64,64", "--precision", "f32")
    assert res.returncode == 0, res.stderr
    with read_image(out) as image:
        data, axes = np.asarray(image.array), image.axes
    assert axes == "zcyx" and data.shape == (36, 2, 206, 94)
    expect = load(models / "m3d.onnx").predict(tifffile.imread(src), tile=(16, 64, 64))
    assert np.abs(data[:, 1] - expect).max() <= 1e-5


def test_hdf5_to_zarr(models, tmp_path, data_dir):
    """2. HDF5 in, Zarr out: the default `-f imagej` was passed to the Zarr writer after the whole run."""
    src = data_dir / "ovule_3d_seg" / "pytorch3dunet_sample_patch.h5"
    out = tmp_path / "out.zarr"
    res = run_cli("apply", "-m", models / "m3d.onnx", "-i", src, "-o", out, "-B", "16,64,64", "--precision", "f32")
    assert res.returncode == 0, res.stderr
    import zarr

    group = zarr.open_group(str(out), mode="r")
    meta = group.attrs["multiscales"][0]
    assert meta["version"] == "0.4" and [a["name"] for a in meta["axes"]] == ["z", "y", "x"]
    with read_image(src) as image:
        raw = np.asarray(image.array)
    expect = load(models / "m3d.onnx").predict(raw, tile=(16, 64, 64))
    assert np.abs(np.asarray(group["0"]) - expect).max() <= 1e-5


def test_output_without_suffix_fails_before_compute(models, tmp_path, data_dir):
    """3. `-o out` ran the whole volume, then failed on the suffix."""
    out = tmp_path / "out"
    res, wall, cpu = timed_cli("apply", "-m", models / "m3d.onnx", "-i",
                               data_dir / "isbi2012_em" / "isbi2012_train_volume.tif", "-o", out)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "suffix" in res.stderr and ".tif" in res.stderr
    assert not out.exists() and cpu < 2.0 and wall < 10.0, (cpu, wall)


def test_2d_model_on_a_time_lapse(models, tmp_path, data_dir):
    """4. A 2D model on a 2D+t movie (axes TYX in its metadata) restores every frame; the output keeps t."""
    movie = tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")[:6, :200, :240]
    src = tmp_path / "movie.tif"
    tifffile.imwrite(src, movie, imagej=True, metadata={"axes": "TYX"})
    out = tmp_path / "restored.tif"
    res = run_cli("apply", "-m", models / "m2d.onnx", "-i", src, "-o", out, "-B", "64,64", "--precision", "f32")
    assert res.returncode == 0, res.stderr
    with read_image(out) as image:
        data, axes = np.asarray(image.array), image.axes
    assert axes == "tcyx" and data.shape == (6, 2, 200, 240)
    model = load(models / "m2d.onnx")
    expect = model.predict(movie, tile=(64, 64), axes="tyx")
    assert np.abs(data[:, 1] - expect).max() <= 1e-5
    # the frames went through the pipeline together: batches of several frames' tiles, not one call per frame
    assert model.last_stats.tiles / model.last_stats.batches >= 3


def test_bad_output_path_fails_fast_on_a_long_volume(tmp_path, data_dir):
    """A volume that takes >= 30 s to restore here; a bad output path fails in under 2 s, writing nothing."""
    model_path = tmp_path / "heavy.onnx"
    conv_stack(model_path, ndim=3, layers=4, channels=32, normalization=Normalization(kind="percentile"))
    em = tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif")
    volume = np.tile(em, (2, 1, 1))  # 60 x 512 x 512 real EM
    src = tmp_path / "volume.tif"
    tifffile.imwrite(src, volume, imagej=True, metadata={"axes": "ZYX"})
    model = load(model_path, backend="ort")
    tile = (16, 128, 128)
    t0 = time.perf_counter()
    model.predict(volume[:16, :128, :128], tile=tile)  # one tile
    per_tile = time.perf_counter() - t0
    estimate = per_tile * model.n_tiles(volume.shape, tile=tile)
    assert estimate >= 30.0, f"the volume takes only {estimate:.1f} s; the test needs a longer one"
    for bad in (tmp_path / "missing" / "deeper" / "out.txt", tmp_path / "out", src):
        res, wall, cpu = timed_cli("apply", "-m", model_path, "-i", src, "-o", bad, "-B", "16,128,128")
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert cpu < 2.0 and wall < 10.0, (bad, cpu, wall, estimate)
    assert tifffile.imread(src).shape == volume.shape  # the input is untouched
