"""The user-path matrix: `scopert apply` on real data, every model kind x input format x output format x size.

Each cell runs the real CLI (click, in-process for speed; a few cells in a child process) on a crop of a real EM
volume (ISBI 2012) and checks what a user would open: the output's axes metadata, the restored values against
`model.predict` on the same array (max abs <= 1e-5), and for TIFF the raw/restored channels 3D-RCAN writes.
Cells that cannot make sense must fail with a clear error (exit 2) and write nothing. The matrix is generated,
and `test_matrix_report` prints how many cells ran and passed.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
import tifffile
from click.testing import CliRunner

from scopert.card import ModelCard, Normalization, TensorSpec
from scopert.cli import cli
from scopert.runtime import load
from scopert.runtime.io import read_image
from scopert.runtime.normalize import fit_normalization
from tests.runtime.graphs import conv_stack

# model kind: (model file, data axes, tile for the model's own axes)
KINDS = {
    "2d_yx": ("m2d", "yx", "32,32"),
    "2d_tyx": ("m2d", "tyx", "32,32"),
    "2d_zyx": ("m2d", "zyx", "32,32"),
    "2d_tzyx": ("m2d", "tzyx", "32,32"),
    "3d_zyx": ("m3d", "zyx", "8,32,32"),
    "3d_tzyx": ("m3d", "tzyx", "8,32,32"),
    "window_tyx": ("win", "tyx", "32,32"),
    "2ch_tyx": ("m2ch", "tyx", "32,32"),
    "up2_yx": ("up2", "yx", "32,32"),
}
INPUTS = ("imagej", "ome", "plain", "hdf5", "zarr", "folder")
OUTPUTS = {"tiff": ".tif", "ome": ".ome.tif", "hdf5": ".h5", "zarr": ".zarr"}
# smaller than one tile; several tiles, loaded whole; the same read tile by tile (threshold set to 0 bytes)
SIZES = {"subtile": {"t": 3, "z": 3, "y": 20, "x": 24}, "small": {"t": 4, "z": 6, "y": 48, "x": 56},
         "lazy": {"t": 4, "z": 6, "y": 48, "x": 56}}
RESULTS: dict[str, str] = {}


def _window_model(path: Path) -> None:
    """A frame-window model (3 frames in, the centre frame out), like the blind-spot denoiser."""
    conv_stack(path, ndim=2, layers=2, cin=3, card=False)
    model = onnx.load(str(path))
    card = ModelCard(family="test", name="win", input=TensorSpec("input", "btyx", channels=1, time_window=3),
                     output=TensorSpec("output", "bcyx", channels=1), halo={"y": 2, "x": 2}, tile_invariant=True,
                     normalization=Normalization(kind="none"))
    card.validate()
    card.embed(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    norm = Normalization(kind="percentile", pmin=1.0, pmax=99.8)
    conv_stack(root / "m2d.onnx", ndim=2, layers=2, divisor=4, normalization=norm)
    conv_stack(root / "m3d.onnx", ndim=3, layers=2, normalization=norm)
    conv_stack(root / "m2ch.onnx", ndim=2, layers=2, cout=2, normalization=norm)
    conv_stack(root / "up2.onnx", ndim=2, layers=2, upsample=2, normalization=norm)
    _window_model(root / "win.onnx")
    return {name: root / f"{name}.onnx" for name in ("m2d", "m3d", "m2ch", "up2", "win")}


@pytest.fixture(scope="module")
def em(data_dir) -> np.ndarray:
    return tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif")


def _data(em: np.ndarray, axes: str, size: str) -> np.ndarray:
    dims = SIZES[size]
    shape = tuple(dims[a] for a in axes)
    planes = int(np.prod(shape[:-2]))
    return em[:planes, 100:100 + shape[-2], 200:200 + shape[-1]].reshape(shape)


def _write_input(folder: Path, data: np.ndarray, axes: str, fmt: str) -> Path:
    if fmt == "imagej":
        path = folder / "in.tif"
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": axes.upper()})
    elif fmt == "ome":
        path = folder / "in.ome.tif"
        tifffile.imwrite(path, data, ome=True, metadata={"axes": axes.upper()})
    elif fmt == "plain":
        path = folder / "in.tif"
        tifffile.imwrite(path, data, photometric="minisblack", compression="zlib")  # no axes; read slab by slab
    elif fmt == "hdf5":
        path = folder / "in.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("raw", data=data).attrs["axes"] = axes
    elif fmt == "zarr":
        import zarr

        path = folder / "in.zarr"
        group = zarr.open_group(str(path), mode="w")
        group.create_array("raw", shape=data.shape, dtype=data.dtype)[...] = data
        group["raw"].attrs["axes"] = axes
    else:  # a folder of two ImageJ TIFFs
        path = folder / "in"
        path.mkdir()
        for i in range(2):
            tifffile.imwrite(path / f"im{i}.tif", data, imagej=True, metadata={"axes": axes.upper()})
    return path


def _expected_axes(axes: str, fmt: str, model_name: str) -> str:
    """What the file tells: a plain TIFF says nothing, so its leading axes read as z (then t)."""
    if fmt != "plain" or model_name == "win":
        return axes
    return {2: "yx", 3: "zyx", 4: "tzyx"}[len(axes)]


def _read_output(path: Path, kind: str) -> tuple[np.ndarray, str]:
    if kind in ("tiff", "ome"):
        with tifffile.TiffFile(path) as tif:
            assert tif.is_imagej if kind == "tiff" else tif.is_ome
    with read_image(path, dataset="predictions" if kind == "hdf5" else None) as image:
        return np.asarray(image.array[(slice(None),) * image.ndim]), image.axes


def _check_cell(models, em, tmp: Path, kind: str, in_fmt: str, out_kind: str, size: str, monkeypatch) -> None:
    model_name, axes, tile = KINDS[kind]
    data = _data(em, axes, size)
    src = _write_input(tmp, data, axes, in_fmt)
    suffix = OUTPUTS[out_kind]
    out = tmp / ("out" if in_fmt == "folder" else "out" + suffix)
    args = ["apply", "-m", str(models[model_name]), "-i", str(src), "-o", str(out), "-B", tile, "--backend", "ort"]
    if in_fmt == "folder":
        args += ["--suffix", suffix]
    if size == "lazy":
        monkeypatch.setattr("scopert.runtime.apply.IN_MEMORY_BYTES", 0)
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    assert result.exit_code == 0, (result.output, result.exception)
    files = [out / f"im{i}{suffix}" for i in range(2)] if in_fmt == "folder" else [out]
    model = load(models[model_name], backend="ort")
    data_axes = _expected_axes(axes, in_fmt, model_name)
    expect = model.predict(data, tile=tuple(int(v) for v in tile.split(",")), axes=data_axes)
    expect_axes = model.output_axes(data_axes)
    same_grid = model_name != "up2"
    for path in files:
        got, got_axes = _read_output(path, out_kind)
        c_out = model.card.output.channels
        if out_kind in ("tiff", "ome") and same_grid:  # raw (normalized) and restored channels, as 3D-RCAN
            assert "c" in got_axes and got.shape[got_axes.index("c")] == 1 + c_out
            order = [got_axes.index(a) for a in "c" + data_axes]
            got = np.transpose(got, order)
            raw = fit_normalization(data, model.card.normalization)(data)
            np.testing.assert_allclose(got[0], raw, atol=1e-5)
            got, got_axes = (got[1:] if c_out > 1 else got[1]), ("c" + data_axes if c_out > 1 else data_axes)
        assert sorted(got_axes) == sorted(expect_axes), (got_axes, expect_axes)
        got = np.transpose(got, [got_axes.index(a) for a in expect_axes])
        assert got.shape == expect.shape
        assert np.abs(got - expect).max() <= 1e-5


CELLS = list(itertools.product(KINDS, INPUTS, OUTPUTS, SIZES))


@pytest.mark.parametrize("kind,in_fmt,out_kind,size", CELLS, ids=["-".join(c) for c in CELLS])
def test_cell(models, em, tmp_path, kind, in_fmt, out_kind, size, monkeypatch):
    key = "-".join((kind, in_fmt, out_kind, size))
    RESULTS[key] = "failed"
    _check_cell(models, em, tmp_path, kind, in_fmt, out_kind, size, monkeypatch)
    RESULTS[key] = "passed"


# ---- cells that cannot make sense: a clear error, exit 2, nothing written -------------------------------------
def _invoke_error(args, out: Path, *words):
    result = CliRunner().invoke(cli, args, catch_exceptions=True, standalone_mode=False)
    exc = result.exception
    assert exc is not None and getattr(exc, "exit_code", None) == 2, (result.output, exc)
    for word in words:
        assert word.lower() in str(exc).lower(), (word, str(exc))
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "no temporary may remain"


BAD = {
    "3d model on a 2D image": ("m3d", "yx", ".tif", (), ("do not fit this model", "--axes")),
    "window model on a movie shorter than its window": ("win", "tyx", ".tif", (), ("time window",)),
    "window model on a z-stack of movies": ("win", "tzyx", ".tif", (), ("do not fit this model", "--axes")),
    "unknown output suffix": ("m2d", "yx", ".png", (), ("suffix",)),
    "no output suffix": ("m2d", "yx", "", (), ("suffix",)),
    "-f for an HDF5 output": ("m2d", "yx", ".h5", ("-f", "ome"), ("-f",)),
    "tile not a multiple of the divisor": ("m2d", "zyx", ".tif", ("-B", "30,30"), ("divisor",)),
    "tile not larger than twice the halo": ("m3d", "zyx", ".tif", ("-B", "4,32,32"), ("halo",)),
    "axes that do not fit": ("m2d", "zyx", ".tif", ("--axes", "cyx"), ("channels",)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_cell_that_cannot_make_sense(models, em, tmp_path, case):
    model_name, axes, suffix, extra, words = BAD[case]
    size = "subtile"
    data = _data(em, axes, size)
    if case.startswith("window model on a movie shorter"):
        data = data[:2]
    src = _write_input(tmp_path, data, axes, "imagej")
    out = tmp_path / f"out{suffix}"
    _invoke_error(["apply", "-m", str(models[model_name]), "-i", str(src), "-o", str(out), "--backend", "ort",
                   *extra], out, *words)


def test_bad_output_fails_at_once_in_a_child_process(models, em, tmp_path):
    """The CLI as a user runs it: exit 2, one line, no traceback, nothing written."""
    src = _write_input(tmp_path, _data(em, "zyx", "small"), "zyx", "imagej")
    out = tmp_path / "result"
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "scopert", "apply", "-m", str(models["m2d"]), "-i", str(src), "-o",
                          str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "suffix" in res.stderr and time.perf_counter() - t0 < 10
    assert not out.exists()


def test_matrix_report(capsys):
    """Runs last in this file: how many generated cells ran and passed."""
    ran = len(RESULTS)
    passed = sum(v == "passed" for v in RESULTS.values())
    with capsys.disabled():
        print(f"\nuser-path matrix: {ran} of {len(CELLS)} cells ran, {passed} passed; "
              f"{len(BAD)} cells that cannot make sense refused")
    if ran:
        assert passed == ran
