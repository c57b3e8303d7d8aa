"""Issue 24: every seed family through every user path, each asserted equal to ``load(model).predict``.

The matrix is family x path. Families are imported from checkpoints in their seed repositories' formats (never a
generic conv stack in a family's place); inputs are crops of the real data in ``../shared/data`` with their axes in
the file. Paths: ``scopert apply`` to each output format (TIFF, HDF5, OME-Zarr, read back with tifffile, h5py and
zarr), ``--precision auto`` (the default; on a bf16 CPU an ungated model measures the gate on its own input,
records it beside the model and runs bf16 only where it passed), ``scopert package`` then ``scopert import
bioimageio`` of the package, and ``scopert stream --replay`` (2D and 2D+t families; a 3D family is refused with the
reason). ``apply --cluster local:2`` per family is ``tests/scaleout/test_families.py``.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from scopert.cli import cli
from scopert.runtime import load
from tests.families import exported

# family -> (input file, its axes, the input's crop description)
FAMILIES = {
    "rcan": ("ovule.tif", "zyx"),
    "unet": ("ovule.tif", "zyx"),
    "rcan2d": ("em.tif", "zyx"),
    "cnnt": ("movie.tif", "tyx"),
    "blindspot": ("movie.tif", "tyx"),
    "tagan": ("w2s.tif", "yx"),
}
STREAMED = ("rcan2d", "cnnt", "blindspot", "tagan")  # 2D frames in; rcan/unet are 3D models
TOLERANCE = 1e-5  # max |path - predict| / output range (the same engine on the same tiles: float noise only)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("family_path_models")


@pytest.fixture(scope="module")
def images(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("family_path_images")
    with h5py.File(data_dir / "ovule_3d_seg" / "pytorch3dunet_sample_patch.h5", "r") as f:
        tifffile.imwrite(root / "ovule.tif", f["raw"][8:24, 40:104, 30:110], imagej=True, metadata={"axes": "ZYX"})
    em = tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif")
    tifffile.imwrite(root / "em.tif", em[:4, 100:196, 50:162], imagej=True, metadata={"axes": "ZYX"})
    movie = tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")[:12, 100:164, 200:280]
    tifffile.imwrite(root / "movie.tif", np.ascontiguousarray(movie), imagej=True, metadata={"axes": "TYX"})
    w2s = tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")[0, :160, :176]
    tifffile.imwrite(root / "w2s.tif", w2s)
    return root


def _model_and_expected(family, models, images, precision="f32"):
    model_path = exported(family, models)
    image, axes = FAMILIES[family]
    expect = load(model_path, precision=precision).predict(tifffile.imread(images / image), axes=axes)
    return model_path, expect


def _close(got: np.ndarray, expect: np.ndarray, what: str) -> float:
    got = np.squeeze(np.asarray(got, np.float64))
    expect = np.squeeze(np.asarray(expect, np.float64))
    assert got.shape == expect.shape, (what, got.shape, expect.shape)
    span = float(expect.max() - expect.min())
    assert span > 1e-3, f"{what}: a flat output would prove nothing"
    rel = float(np.abs(got - expect).max()) / span
    assert rel <= TOLERANCE, (what, rel)
    return rel


def _invoke(*args) -> str:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, (args, res.output, res.exception)
    return res.output


def _restored_tiff(path) -> np.ndarray:
    """The restored channel of an output TIFF (3D-RCAN's layout: the normalized raw, then the restored image)."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data, axes = series.asarray(), series.axes
    assert "C" in axes and data.shape[axes.index("C")] >= 2, (axes, data.shape)
    return np.moveaxis(np.take(data, range(1, data.shape[axes.index("C")]), axis=axes.index("C")),
                       axes.index("C"), 0)  # channels first, as predict returns them


READERS = {
    "tif": _restored_tiff,
    "h5": lambda p: h5py.File(p, "r")["predictions"][:],
    "zarr": lambda p: zarr.open_array(str(p / "0"), mode="r")[:],
}


@pytest.mark.parametrize("fmt", sorted(READERS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_apply_writes_what_predict_returns(family, fmt, models, images, tmp_path):
    model_path, expect = _model_and_expected(family, models, images)
    out = tmp_path / f"out.{fmt}"
    _invoke("apply", "-m", model_path, "-i", images / FAMILIES[family][0], "-o", out, "--precision", "f32")
    _close(READERS[fmt](out), expect, f"{family} apply -> {fmt}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_precision_auto_measures_and_records_the_gate_on_its_own_input(family, models, images, tmp_path):
    """No gate in the card (an imported model's export has no training data): auto measures it on the input."""
    from scopert.runtime.cpu import cpu_caps
    from scopert.runtime.selection.precision import gate_path
    from scopert.runtime.compare import psnr_db

    model_path, f32 = _model_and_expected(family, models, images)
    copy = tmp_path / model_path.name  # its own folder: the record beside it starts absent
    copy.write_bytes(model_path.read_bytes())
    assert load(copy, precision="auto").precision_decision.precision == "fp32"  # nothing measured, no input: f32
    out = tmp_path / "auto.tif"
    _invoke("apply", "-m", copy, "-i", images / FAMILIES[family][0], "-o", out)
    got = _restored_tiff(out)
    record = gate_path(copy)
    if not cpu_caps().bf16:
        assert not record.exists()
        _close(got, f32, f"{family} auto on a CPU without bf16")
        return
    gates = json.loads(record.read_text())["records"]
    (gate,) = gates.values()
    chosen = load(copy, precision="auto").precision_decision  # a later run reuses the recorded gate
    psnr = psnr_db(np.squeeze(f32), np.squeeze(got))
    print(f"\n{family}: recorded gate {gate['psnr_db']} dB on {gate['tiles']} tiles; auto -> {chosen.precision}; "
          f"output vs f32 {psnr:.1f} dB")
    if chosen.precision == "bf16":
        assert gate["psnr_db"] is None or gate["psnr_db"] >= 45.0
        assert psnr >= 40.0  # the whole output, not only the gate's tiles
    else:
        assert gate["psnr_db"] is not None and gate["psnr_db"] < 45.0 or not gate["bf16_ops"]
        _close(got, f32, f"{family} auto refused bf16")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bioimageio_package_round_trip_predicts_the_same(family, models, images, tmp_path):
    model_path, expect = _model_and_expected(family, models, images)
    package = tmp_path / f"{family}.zip"
    args = ["package", model_path, "-o", package, "--sample", images / FAMILIES[family][0]]
    if family == "blindspot":  # its output is rescaled to the raw centre frame's range outside the graph
        res = CliRunner().invoke(cli, [str(a) for a in args])
        assert "minmax_to_centre_frame" in str(res.exception) and not package.exists(), res.output
        return
    _invoke(*args)
    back = tmp_path / "back.onnx"
    _invoke("import", "bioimageio", package, "-o", back)
    image, axes = FAMILIES[family]
    imported = load(back, precision="f32")
    got = imported.predict(tifffile.imread(images / image), axes=axes)
    original = load(model_path).card
    if imported.card.halo != original.halo:
        # The package declares each halo rounded up so that 2*halo is on the divisor grid (bioimage.io tools then
        # place the same blocks as ScopeRT); a tile-variant net's output follows its tiles, so the original graph
        # is run under the package's halo (a sidecar card beside a copy) to show nothing else changed.
        for ax, h in original.halo.items():
            d = original.input.divisor.get(ax, 1)
            assert h <= imported.card.halo[ax] < h + d and 2 * imported.card.halo[ax] % d == 0
        from scopert.card import sidecar_path

        copy = tmp_path / "original.onnx"
        copy.write_bytes(model_path.read_bytes())
        original.halo = dict(imported.card.halo)
        sidecar_path(copy).write_text(original.to_json())
        expect = load(copy, precision="f32").predict(tifffile.imread(images / image), axes=axes)
    _close(got, expect, f"{family} package -> import bioimageio")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_stream_replay_equals_predict(family, models, images, tmp_path):
    """Frames of a real time-lapse streamed at 1000 fps (--on-full block: none dropped) give what ``predict``
    gives offline: frame by frame for 2D models, the centre frame of each mirrored window for the blind-spot model,
    and for CNNT (2D+t) what ``predict`` gives on each chunk of ``time_window`` frames the stream runs (the
    stream cannot normalize over frames that have not arrived yet; the last, short chunk runs with the frames
    before it)."""
    model_path = exported(family, models)
    replay = images / "movie.tif"
    if family == "tagan":  # TA-GAN's input is larger than the movie: three copies of its W2S plane as frames
        replay = tmp_path / "frames.tif"
        tifffile.imwrite(replay, np.stack([tifffile.imread(images / "w2s.tif")] * 3), imagej=True,
                         metadata={"axes": "TYX"})
    out = tmp_path / "stream.tif"
    args = ["stream", "--replay", replay, "--fps", "1000", "--on-full", "block", "-m", model_path, "-o", out,
            "--precision", "f32"]
    if family not in STREAMED:
        res = CliRunner().invoke(cli, [str(a) for a in args])
        assert "is a 3D model" in str(res.exception) and not out.exists(), res.output
        return
    _invoke(*args)
    frames = tifffile.imread(replay)
    model = load(model_path, precision="f32")
    if family == "cnnt":
        size, n = model.card.input.time_window, len(frames)
        chunks = [model.predict(frames[i:i + size], axes="tyx") for i in range(0, n - n % size, size)]
        if n % size:
            chunks.append(model.predict(frames[n - size:], axes="tyx")[size - n % size:])
        expect = np.concatenate(chunks)
    elif family == "blindspot":
        expect = model.predict(frames, axes="tyx")
    else:  # a 2D model: each frame on its own, normalized over itself, as `scopert apply` on one frame
        expect = np.stack([model.predict(frame) for frame in frames])
    _close(tifffile.imread(out), expect, f"{family} stream --replay")
