"""HDF5 I/O: pytorch-3dunet's real file, missing datasets, round trips, streaming, atomic writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from scopert.errors import ConfigError, InputError, RunError
from scopert.runtime.io import read_hdf5, read_image, write_hdf5, write_image
from scopert.runtime.io.outputs import OutputSpec, open_writer

OVULE = "ovule_3d_seg/pytorch3dunet_sample_patch.h5"


def test_reads_real_pytorch3dunet_file_lazily(data_dir):
    with read_image(data_dir / OVULE) as raw:  # 'raw' is the default dataset
        assert isinstance(raw.array, h5py.Dataset)
        assert raw.shape == (64, 200, 200) and raw.dtype == np.uint16
        assert raw.axes is None and raw.dataset == "raw"
        first = np.asarray(raw.array[:2])
        assert first.shape == (2, 200, 200) and int(first.max()) > 0
    assert not raw.array.id.valid  # closed with the block
    label = read_hdf5(data_dir / OVULE, "label", lazy=False)
    assert isinstance(label.array, np.ndarray) and label.dtype == np.int64
    assert len(np.unique(label.array)) == 107  # the README's instance count


def test_missing_dataset_lists_the_ones_present(data_dir):
    with pytest.raises(InputError) as e:
        read_hdf5(data_dir / OVULE, "predictions")
    msg = str(e.value)
    assert "'predictions'" in msg and "'label'" in msg and "'raw'" in msg


def test_group_is_not_a_dataset(tmp_path):
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_dataset("volumes/raw", data=np.ones((2, 3, 3), np.float32))
    with pytest.raises(InputError, match="is a group") as e:
        read_hdf5(tmp_path / "g.h5", "volumes")
    assert "'volumes/raw'" in str(e.value)
    with read_hdf5(tmp_path / "g.h5", "volumes/raw") as im:
        assert float(im.array[()].sum()) == 18.0


def test_not_an_hdf5_file(tmp_path, data_dir):
    fake = tmp_path / "stack.h5"
    fake.write_bytes((data_dir / "em_misc/cylindra_14pf_MT.tif").read_bytes())
    with pytest.raises(InputError, match="not an HDF5 file") as e:
        read_image(fake)
    assert "stack.h5" in str(e.value)
    with pytest.raises(InputError, match="does not exist"):
        read_hdf5(tmp_path / "nothing.h5")


def test_round_trip_with_axes_and_compression(tmp_path):
    z, y, x = np.mgrid[0:16, 0:64, 0:64]
    data = (np.sin(x / 5.0) * np.cos(y / 7.0) + z / 16).astype(np.float32)
    out = write_image(tmp_path / "pred.h5", data, "zyx")
    with h5py.File(out, "r") as f:
        assert list(f.keys()) == ["predictions"]
        assert f["predictions"].compression == "gzip"
        assert f["predictions"].attrs["axes"] == "zyx"
    with read_hdf5(out, "predictions") as im:
        assert im.axes == "zyx"
        np.testing.assert_array_equal(im.array[()], data)
    plain = write_hdf5(tmp_path / "plain.h5", data, compression=None)
    assert out.stat().st_size < plain.stat().st_size  # gzip did something on a smooth volume


def test_bits_apply_to_hdf5_too(tmp_path):
    r = np.array([[0.5, 1.2], [-1.0, 0.999]], np.float32)
    out = write_image(tmp_path / "b.hdf5", r, "yx", bits=8, dataset="out")
    with read_hdf5(out, "out") as im:
        np.testing.assert_array_equal(im.array[()], np.array([[127, 255], [0, 254]], np.uint8))


def test_bad_axes_attribute_is_named(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("raw", data=np.zeros((2, 4, 4), np.uint8)).attrs["axes"] = "yx"
    with pytest.raises(InputError, match="axes attribute 'yx'"):
        read_hdf5(tmp_path / "a.h5")
    with pytest.raises(ConfigError, match="names 2 axes"):
        write_hdf5(tmp_path / "b.h5", np.zeros((2, 4, 4)), axes="yx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_region_writer_equals_array(tmp_path):
    data = np.random.default_rng(4).integers(0, 1000, size=(10, 24, 20)).astype(np.uint16)
    spec = OutputSpec(tmp_path / "s.h5", "hdf5", "zyx", data.shape, data.dtype)
    with open_writer(spec) as w:
        for start, stop in ((0, 4), (4, 5), (5, 10)):
            w.write((slice(start, stop), slice(None), slice(None)), data[start:stop])
    with read_hdf5(tmp_path / "s.h5", "predictions") as im:
        assert im.axes == "zyx"
        np.testing.assert_array_equal(im.array[()], data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_region_writer_interrupted_or_incomplete_leaves_nothing(tmp_path):
    def slabs():
        yield np.zeros((2, 8, 8), np.float32)
        raise OSError("network share went away")

    with pytest.raises(OSError, match="share"):
        with open_writer(OutputSpec(tmp_path / "a.h5", "hdf5", "zyx", (4, 8, 8), np.float32)) as w:
            for s in slabs():
                w.write((slice(0, 2),), s)
    with pytest.raises(RunError, match="only part"):
        with open_writer(OutputSpec(tmp_path / "b.h5", "hdf5", "zyx", (4, 8, 8), np.float32)) as w:
            w.write((slice(0, 3),), np.zeros((3, 8, 8), np.float32))
    assert list(tmp_path.iterdir()) == []
