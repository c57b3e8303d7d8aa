"""A file means what its metadata says (issue 20): physical sizes, time interval and channels survive ``apply``.

The round-trip matrix writes inputs with physical sizes in every format with the formats' own libraries (tifffile,
h5py, ome-zarr-py), runs ``apply`` into every output format with a 2D model over a time-lapse, a 3D model, a 2D+t
model and a 2x upsampling model, and reads the outputs back with independent readers: tifffile (ImageJ tags and
description), ome-types (OME-XML), ome-zarr-py's Reader (NGFF) and h5py. Axes the model cannot take are refused
with the fix, never reinterpreted.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile

from scopert.errors import InputError
from scopert.runtime import load
from scopert.runtime.apply import ApplyOptions, apply_file
from tests.runtime.graphs import conv_stack

ome_types = pytest.importorskip("ome_types")
ome_zarr_reader = pytest.importorskip("ome_zarr.reader")

# the input's physical sizes, in the units each format states them in
NM = 1.052  # nm per pixel, the cryo-ET sub-tomogram's
Z_NM = 2.104
T_S = 0.25
MODELS = {  # name: (conv_stack options, the input's axes, its shape, output scale along y and x)
    "2d_over_t": (dict(ndim=2), "tyx", (5, 40, 48), 1),
    "3d": (dict(ndim=3), "zyx", (6, 40, 48), 1),
    "2d+t": (dict(ndim=3, axes="bctyx", time_window=6), "tyx", (6, 40, 48), 1),
    "up2d": (dict(ndim=2, upsample=2), "tyx", (3, 20, 24), 2),
}
INPUTS = ("imagej.tif", "ome.tif", "h5", "ome.zarr")
OUTPUTS = (".tif", ".ome.tif", ".h5", ".zarr", ".ngff05.zarr")  # the last: --ngff 0.5 (Zarr v3)


def _write_input(path, kind: str, data: np.ndarray, axes: str) -> None:
    if kind == "imagej.tif":
        meta = {"axes": axes.upper(), "unit": "nm"}
        meta.update({"spacing": Z_NM} if "z" in axes else {"finterval": T_S})
        tifffile.imwrite(path, data, imagej=True, resolution=(1 / NM, 1 / NM), metadata=meta)
    elif kind == "ome.tif":
        meta = {"axes": axes.upper(), "PhysicalSizeX": NM, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": NM,
                "PhysicalSizeYUnit": "nm"}
        meta.update({"PhysicalSizeZ": Z_NM, "PhysicalSizeZUnit": "nm"} if "z" in axes else
                    {"TimeIncrement": T_S, "TimeIncrementUnit": "s"})
        tifffile.imwrite(path, data, ome=True, metadata=meta)
    elif kind == "h5":  # element_size_um in micrometres (ilastik / pytorch-3dunet), time in seconds
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("raw", data=data)
            ds.attrs["axes"] = axes
            ds.attrs["element_size_um"] = [(Z_NM if a == "z" else NM) / 1000 for a in axes if a in "zyx"]
            if "t" in axes:
                ds.attrs["time_interval_s"] = T_S
    else:  # NGFF 0.4 written with zarr itself, as the specification spells it
        import zarr

        units = {"t": "second", "z": "nanometer", "y": "nanometer", "x": "nanometer"}
        sizes = {"t": T_S, "z": Z_NM, "y": NM, "x": NM}
        root = zarr.open_group(str(path), mode="w", zarr_format=2)
        root.create_array("0", data=data, chunk_key_encoding={"name": "v2", "separator": "/"})
        root.attrs["multiscales"] = [{
            "version": "0.4", "name": "input",
            "axes": [{"name": a, "type": "time" if a == "t" else "space", "unit": units[a]} for a in axes],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale",
                                                                       "scale": [sizes[a] for a in axes]}]}]}]


def _read_output(path, suffix: str) -> tuple[dict[str, float], str]:
    """Physical sizes per axis in nm (space) and s (time), by an independent reader; and the axes stored."""
    if suffix == ".ome.tif":
        px = ome_types.from_tiff(str(path)).images[0].pixels
        out = {}
        for ax in "xyz":
            size = getattr(px, f"physical_size_{ax}")
            if size is not None:
                unit = getattr(px, f"physical_size_{ax}_unit").value
                out[ax] = size * {"nm": 1.0, "µm": 1000.0}[unit]
        if px.time_increment is not None:
            out["t"] = px.time_increment * {"s": 1.0, "ms": 1e-3}[px.time_increment_unit.value]
        return out, str(px.dimension_order.value)
    if suffix == ".tif":
        with tifffile.TiffFile(path) as tif:
            meta, tags = tif.imagej_metadata, tif.pages[0].tags
            assert meta is not None, "not an ImageJ hyperstack"
            unit = {"nm": 1.0, "micron": 1000.0}[meta["unit"]]
            xres, yres = tags["XResolution"].value, tags["YResolution"].value
            out = {"x": unit * xres[1] / xres[0], "y": unit * yres[1] / yres[0]}
            if "spacing" in meta:
                out["z"] = unit * meta["spacing"]
            if "finterval" in meta:
                out["t"] = meta["finterval"]
            return out, tif.series[0].axes
    if suffix == ".h5":
        with h5py.File(path, "r") as f:
            ds = f["predictions"]
            axes = str(ds.attrs["axes"])
            out = dict(zip([a for a in axes if a in "zyx"], [v * 1000 for v in ds.attrs["element_size_um"]]))
            if "time_interval_s" in ds.attrs:
                out["t"] = float(ds.attrs["time_interval_s"])
            return out, axes
    from ome_zarr.io import parse_url

    node = next(iter(ome_zarr_reader.Reader(parse_url(str(path)))()))
    ms = node.metadata
    scale = ms["coordinateTransformations"][0][0]["scale"]
    out = {}
    for axis, value in zip(ms["axes"], scale):
        if "unit" in axis:
            out[axis["name"]] = value * {"nanometer": 1.0, "micrometer": 1000.0, "second": 1.0}[axis["unit"]]
    return out, "".join(a["name"] for a in ms["axes"])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for name, (opts, *_rest) in MODELS.items():
        conv_stack(folder / f"{name}.onnx", **opts)
        out[name] = load(folder / f"{name}.onnx", backend="ort", device="cpu")
    yield out
    for m in out.values():
        m.close()


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("in_kind", INPUTS)
def test_physical_sizes_round_trip_every_input_to_every_output(models, model_name, in_kind, tmp_path):
    _, axes, shape, up = MODELS[model_name]
    data = np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)
    src = tmp_path / f"in.{in_kind}"
    _write_input(src, in_kind, data, axes)
    want = {"x": NM / up, "y": NM / up, axes[0]: Z_NM if axes[0] == "z" else T_S}
    for suffix in OUTPUTS:
        dst = tmp_path / f"out{suffix}"
        opts = ApplyOptions(dataset="raw" if in_kind == "h5" else None,
                            ngff="0.5" if suffix == ".ngff05.zarr" else None)
        apply_file(models[model_name], src, dst, opts=opts)
        got, stored_axes = _read_output(dst, ".zarr" if suffix.endswith(".zarr") else suffix)
        assert set(got) == set(want), (suffix, got, stored_axes)
        for ax, value in want.items():
            assert got[ax] == pytest.approx(value, rel=1e-6), (suffix, ax, got)


@pytest.fixture
def zcyx_two_channels(tmp_path):
    vol = tifffile.imread("../shared/data/em_misc/cylindra_13pf_MT.tif")[:12, :64, :64]
    path = tmp_path / "zcyx.tif"
    tifffile.imwrite(path, np.stack([vol, vol[::-1]], 1), imagej=True, resolution=(1 / NM, 1 / NM),
                     metadata={"axes": "ZCYX", "unit": "nm", "spacing": NM})
    return path, vol


def test_a_two_channel_stack_is_refused_by_a_one_channel_model_with_the_fix(models, zcyx_two_channels, tmp_path):
    path, _ = zcyx_two_channels
    with pytest.raises(InputError, match=r"zcyx.tif states axes 'zcyx' \(shape \(12, 2, 64, 64\)\): 2 channels.*"
                                         r"--channel N \(0 to 1\).*--per-channel"):
        apply_file(models["3d"], path, tmp_path / "out.tif")
    assert list(tmp_path.glob("out*")) == []


def test_a_movie_is_not_run_as_z_by_a_3d_model(models, data_dir, tmp_path):
    with pytest.raises(InputError, match=r"states axes 'tyx'.*do not fit this model \(bczyx\).*--axes"):
        apply_file(models["3d"], data_dir / "trackpy_bulk_water/bulk_water_first40.tif", tmp_path / "out.tif")


def test_per_channel_and_one_channel_equal_predict_on_each_channel(models, zcyx_two_channels, tmp_path):
    path, vol = zcyx_two_channels
    model = models["3d"]
    per = apply_file(model, path, tmp_path / "per.ome.tif", opts=ApplyOptions(per_channel=True, channels="restored"))
    one = apply_file(model, path, tmp_path / "one.tif", opts=ApplyOptions(channel=1, channels="restored"))
    assert per.output.exists() and one.output.exists()
    with tifffile.TiffFile(tmp_path / "per.ome.tif") as tif:
        assert tif.series[0].axes == "ZCYX"
        out = tif.asarray()
    for c, plane in enumerate([vol, vol[::-1]]):
        np.testing.assert_allclose(out[:, c], model.predict(plane, axes="zyx"), atol=1e-5)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "one.tif"), model.predict(vol[::-1], axes="zyx"),
                               atol=1e-5)
    names = [c.name for c in ome_types.from_tiff(str(tmp_path / "per.ome.tif")).images[0].pixels.channels]
    assert names == ["Restored 0", "Restored 1"]


# ---- outputs that used to lose or hide things (issue 20, item 5) ---------------------------------------------
def _cli(*args):
    from tests.runtime.test_cli_apply import run_cli

    return run_cli(*args)


@pytest.fixture(scope="module")
def m2d_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m2d.onnx"
    conv_stack(path, ndim=2)
    return path


def test_an_existing_output_is_replaced_only_with_overwrite(m2d_path, data_dir, tmp_path):
    src = data_dir / "stardist_nuclei_2d/stardist_dsb2018_img2d.tif"
    out = tmp_path / "out.tif"
    out.write_bytes(b"keep me")
    res = _cli("apply", "-m", m2d_path, "-i", src, "-o", out)
    assert res.returncode == 2 and "exists; pass --overwrite" in res.stderr and "Traceback" not in res.stderr
    assert out.read_bytes() == b"keep me"
    assert _cli("apply", "-m", m2d_path, "-i", src, "-o", out, "--overwrite").returncode == 0
    assert tifffile.imread(out).shape == (2, 512, 512)  # raw and restored


def test_an_existing_folder_as_output_gets_the_input_name(m2d_path, data_dir, tmp_path):
    src = data_dir / "stardist_nuclei_2d/stardist_dsb2018_img2d.tif"
    res = _cli("apply", "-m", m2d_path, "-i", src, "-o", tmp_path, "--suffix", ".h5")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "stardist_dsb2018_img2d.h5").is_file()


def test_ground_truth_goes_into_hdf5_and_zarr_and_metrics_are_printed(m2d_path, data_dir, tmp_path):
    noisy, clean = (data_dir / f"w2s_8bit_pairs/w2s_avg{k}.tif" for k in ("1_noisy", "400_clean"))
    for suffix in (".h5", ".zarr"):
        out = tmp_path / f"out{suffix}"
        res = _cli("apply", "-m", m2d_path, "-i", noisy, "-g", clean, "-o", out)
        assert res.returncode == 0, res.stderr
        assert "PSNR raw" in res.stderr and "PSNR restored" in res.stderr
        from scopert.runtime.io import read_image

        with read_image(out, dataset="predictions" if suffix == ".h5" else None) as img:
            assert img.shape == (2, 12, 512, 512) and img.axes == "czyx"
            gt = np.asarray(img.array[1])
        assert 0.0 <= gt.min() and gt.max() > 0.9  # the normalized ground truth, not zeros
    with h5py.File(tmp_path / "out.h5") as f:
        assert list(f["predictions"].attrs["channel_names"]) == ["Restored", "Ground Truth"]
    with read_image(tmp_path / "out.h5", dataset="predictions") as img:  # and ScopeRT reads the names back
        assert img.channel_names == ["Restored", "Ground Truth"]


def test_bench_refuses_shape_with_data_and_apply_points_a_package_to_import(m2d_path, data_dir, tmp_path):
    res = _cli("bench", m2d_path, "--data", data_dir / "stardist_nuclei_2d/stardist_dsb2018_img2d.tif",
               "--shape", "256,256")
    assert res.returncode == 2 and "drop one of them" in res.stderr
    pkg = tmp_path / "model.zip"
    pkg.write_bytes(b"PK\x03\x04")
    res = _cli("apply", "-m", pkg, "-i", data_dir / "stardist_nuclei_2d/stardist_dsb2018_img2d.tif",
               "-o", tmp_path / "o.tif")
    assert res.returncode == 2 and "scopert import bioimageio" in res.stderr


def test_a_2d_image_goes_to_zarr_and_hdf5_in_chunk_aligned_blocks(m2d_path, data_dir, tmp_path, monkeypatch):
    """A 600x600 image to .zarr took 7.98 s vs 1.44 s to .tif: each of its 600 rows recompressed a chunk."""
    from scopert.runtime.io.omezarr import OmeZarrWriter
    from scopert.runtime.io.outputs import _Hdf5Writer

    calls = []
    for cls in (OmeZarrWriter, _Hdf5Writer):
        real = cls.write
        monkeypatch.setattr(cls, "write", lambda self, region, data, real=real: (calls.append(region),
                                                                                   real(self, region, data))[1])
    src = data_dir / "em_misc/n2v_sem_demo_test_input.tif"
    with load(m2d_path, backend="ort", device="cpu") as model:
        apply_file(model, src, tmp_path / "o.tif")
        for suffix, blocks in ((".zarr", 2), (".h5", 3)):  # 512 + 88 rows; 256 + 256 + 88 rows
            calls.clear()
            apply_file(model, src, tmp_path / f"o{suffix}")
            assert len(calls) == blocks, (suffix, calls)
            from scopert.runtime.io import read_image

            with read_image(tmp_path / f"o{suffix}", dataset="predictions" if suffix == ".h5" else None) as img:
                np.testing.assert_array_equal(np.asarray(img.array), tifffile.imread(tmp_path / "o.tif")[1])


@pytest.mark.parametrize("with_gt", [False, True])  # streamed, and composed in memory
def test_the_raw_channel_can_keep_the_input_values(m2d_path, data_dir, tmp_path, with_gt):
    noisy = data_dir / "w2s_8bit_pairs/w2s_avg1_noisy.tif"
    args = ["-g", data_dir / "w2s_8bit_pairs/w2s_avg400_clean.tif"] if with_gt else []
    res = _cli("apply", "-m", m2d_path, "-i", noisy, "-o", tmp_path / "o.tif", "--raw-values", "input", *args)
    assert res.returncode == 0, res.stderr
    out = tifffile.imread(tmp_path / "o.tif")
    np.testing.assert_array_equal(out[:, 0], tifffile.imread(noisy).astype(np.float32))  # Z, C, Y, X: raw first
    res = _cli("apply", "-m", m2d_path, "-i", noisy, "-o", tmp_path / "b.tif", "--raw-values", "input", "-b", "16")
    assert res.returncode == 2 and "use -b 32" in res.stderr


def test_channel_options_need_a_channel_axis_and_a_channel_that_exists(models, zcyx_two_channels, data_dir, tmp_path):
    from scopert.errors import ConfigError

    path, _ = zcyx_two_channels
    with pytest.raises(ConfigError, match=r"--channel 2: zcyx.tif has 2 channels; give 0 to 1"):
        apply_file(models["3d"], path, tmp_path / "a.tif", opts=ApplyOptions(channel=2))
    cryo = data_dir / "em_misc/cylindra_13pf_MT.tif"
    with pytest.raises(ConfigError, match=r"--per-channel needs a channel axis.*has axes zyx.*--axes cyx"):
        apply_file(models["3d"], cryo, tmp_path / "b.tif", opts=ApplyOptions(per_channel=True))
    assert not (tmp_path / "a.tif").exists() and not (tmp_path / "b.tif").exists()
