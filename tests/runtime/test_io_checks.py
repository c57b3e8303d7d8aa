"""Input checks, output-path checks, atomic paths, suffix dispatch, axes mapping and folder batch mode."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from scopert.errors import ConfigError, InputError, OutputError
from scopert.runtime.io import (
    atomic_path,
    check_array,
    check_output_path,
    list_images,
    normalize_axes,
    plan_batch,
    read_image,
    validate_axes,
    write_image,
)
from scopert.runtime.io import image as image_mod

# ------------------------------------------------------------------------ check_array


def test_valid_arrays_pass(data_dir):
    check_array(np.zeros((3, 4, 5), np.uint16))
    check_array(np.linspace(0, 1, 20, dtype=np.float16).reshape(4, 5))
    with read_image(data_dir / "ovule_3d_seg/pytorch3dunet_sample_patch.h5") as im:
        check_array(im.array)


def test_nan_and_inf_are_counted_with_first_index():
    a = np.zeros((4, 5, 6), np.float32)
    a[1, 2, 3] = np.nan
    a[3, 0, 0] = np.nan
    a[2, 4, 5] = np.inf
    a[2, 0, 1] = -np.inf
    with pytest.raises(InputError) as e:
        check_array(a, "raw.tif")
    msg = str(e.value)
    assert "raw.tif contains 2 NaN and 2 Inf values" in msg
    assert "first at index (1, 2, 3)" in msg and "nan_to_num" in msg


def test_nan_scan_goes_slab_by_slab_over_a_memmap(tmp_path, monkeypatch):
    path = tmp_path / "m.raw"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(50, 16, 16))
    mm[:] = 1.0
    mm[37, 9, 4] = np.inf
    mm.flush()
    ro = np.load(path, mmap_mode="r")
    monkeypatch.setattr(image_mod, "_CHECK_SLAB_BYTES", 3 * 16 * 16 * 4)  # 3 rows per slab -> 17 slabs
    seen = []
    real_asarray = np.asarray

    def counting(x, *a, **k):
        seen.append(x.shape[0])
        return real_asarray(x, *a, **k)

    monkeypatch.setattr(image_mod.np, "asarray", counting)
    with pytest.raises(InputError, match=r"1 Inf values \(first at index \(37, 9, 4\)\)"):
        check_array(ro)
    monkeypatch.undo()
    assert len(seen) == 17 and max(seen) == 3


def test_nan_in_hdf5_dataset(tmp_path):
    with h5py.File(tmp_path / "n.h5", "w") as f:
        ds = f.create_dataset("raw", data=np.ones((6, 8, 8), np.float64))
        ds[5, 7, 7] = np.nan
        with pytest.raises(InputError, match=r"1 NaN values \(first at index \(5, 7, 7\)\)"):
            check_array(ds)


@pytest.mark.parametrize(
    "array,words",
    [
        (np.zeros((0, 4, 4), np.float32), "empty"),
        (np.zeros((4, 0), np.uint8), "empty"),
        (np.zeros((4, 4), np.complex64), "complex"),
        (np.zeros((4, 4), bool), "boolean"),
        (np.empty((2, 2), object), "object"),
        (np.array([["a", "b"], ["c", "d"]]), "string"),
        (np.zeros(7, np.float32), "at least two dimensions"),
    ],
)
def test_unusable_arrays_are_named(array, words):
    with pytest.raises(InputError, match=words):
        check_array(array)


# ------------------------------------------------------------------------ output paths, atomic writes


def test_output_equal_to_input_is_refused(tmp_path):
    src = tmp_path / "in.tif"
    src.write_bytes(b"x")
    link = tmp_path / "link.tif"
    link.symlink_to(src)
    hard = tmp_path / "hard.tif"
    os.link(src, hard)
    for out in (src, tmp_path / "sub" / ".." / "in.tif", link, hard):
        with pytest.raises(OutputError, match="is the input"):
            check_output_path(out, [src])
    assert check_output_path(tmp_path / "out.tif", [src]) == tmp_path / "out.tif"


def test_output_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "afile.txt"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="is a file, not a folder; choose another path"):
        check_output_path(blocker / "out.tif")
    with pytest.raises(OutputError, match="so the output folder .* cannot be created; choose another path"):
        check_output_path(blocker / "sub" / "out.tif")
    with pytest.raises(OutputError, match="does not exist; create it first"):
        check_output_path(tmp_path / "none" / "o.tif", folder="existing")
    with pytest.raises(OutputError, match=r"unknown file type '\.txt'; use a name ending in \.tif or \.zarr"):
        check_output_path(tmp_path / "o.txt", suffixes=(".tif", ".zarr"))
    assert check_output_path(tmp_path / "later" / "o.tif", folder="creatable").name == "o.tif"
    assert not (tmp_path / "later").exists()  # only checked, nothing made before the work starts
    with pytest.raises(OutputError, match="existing folder"):
        check_output_path(tmp_path)
    made = check_output_path(tmp_path / "new" / "deeper" / "o.tif")
    assert made.parent.is_dir() and made.is_absolute()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to 0o500 folders")
def test_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output_path(ro / "o.tif")
    finally:
        ro.chmod(0o700)


def test_atomic_path_renames_on_success_and_cleans_up_on_error(tmp_path):
    dest = tmp_path / "r.tif"
    with atomic_path(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.name == f".r.tif.partial-{os.getpid()}"
        tmp.write_bytes(b"one")
    assert dest.read_bytes() == b"one"
    with pytest.raises(ValueError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"two, half")
            raise ValueError("model crashed")
    assert dest.read_bytes() == b"one" and sorted(p.name for p in tmp_path.iterdir()) == ["r.tif"]
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new.tif") as tmp:
            tmp.write_bytes(b"x")
            raise RuntimeError
    assert not (tmp_path / "new.tif").exists()


def test_atomic_path_replaces_a_store_folder(tmp_path):
    dest = tmp_path / "out.zarr"
    for n in (1, 2):
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            (tmp / f"chunk{n}").write_text(str(n))
    assert sorted(p.name for p in dest.iterdir()) == ["chunk2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


# ------------------------------------------------------------------------ dispatch, axes


def test_unknown_suffix_lists_supported(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"\.tif, \.tiff, \.h5, \.hdf5, \.hdf, \.zarr"):
        read_image(tmp_path / "a.png")
    with pytest.raises(InputError, match="unknown image file type"):
        write_image(tmp_path / "a.jpg", np.zeros((2, 2), np.uint8), "yx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_zarr_without_zarr_is_a_clear_error(tmp_path):
    try:
        import zarr  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("zarr is installed")
    (tmp_path / "a.zarr").mkdir()
    with pytest.raises(InputError, match="pip install"):
        read_image(tmp_path / "a.zarr")
    with pytest.raises(ConfigError, match="'zarr' package"):
        write_image(tmp_path / "b.zarr", np.zeros((2, 2), np.uint8), "yx")


def test_zarr_round_trip_when_installed(tmp_path):
    zarr = pytest.importorskip("zarr")
    data = np.random.default_rng(5).random((3, 16, 20), dtype=np.float32)
    out = write_image(tmp_path / "p.zarr", data, "zyx")
    im = read_image(out, dataset="predictions")
    assert im.axes == "zyx"
    np.testing.assert_array_equal(im.array[:], data)
    write_image(out, data, "zyx", bits=8)  # replaces the whole store
    assert read_image(out, dataset="predictions").dtype == np.uint8
    with pytest.raises(InputError, match="'predictions'"):
        read_image(out)  # default 'raw' is missing
    plain = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=(4, 8, 8), dtype="u2")
    plain[:] = 7
    assert int(read_image(tmp_path / "plain.zarr").array[:].sum()) == 7 * 256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr", "plain.zarr"]


def test_dataset_option_is_refused_for_tiff(tmp_path):
    with pytest.raises(ConfigError, match="drop the dataset option"):
        write_image(tmp_path / "a.tif", np.zeros((2, 2), np.uint8), "yx", dataset="raw")


@pytest.mark.parametrize(
    "source,expected",
    [("ZCYX", "zcyx"), ("TZCYX", "tzcyx"), ("QYX", "zyx"), ("IYX", "zyx"), ("IQYX", "tzyx"),
     ("YXS", "yxc"), ("QZYX", "tzyx"), ("CQYX", "czyx"), ("TYX", "tyx")],
)
def test_axes_mapping(source, expected):
    assert normalize_axes(source) == expected


def test_axes_that_cannot_be_mapped():
    with pytest.raises(InputError, match="RGB"):
        normalize_axes("CYXS")
    with pytest.raises(InputError, match="at most five axes"):
        normalize_axes("QQQQYX")
    with pytest.raises(ConfigError, match="unknown letters"):
        validate_axes("zqx", 3)
    with pytest.raises(ConfigError, match="must contain 'y' and 'x'"):
        validate_axes("zcy", 3)


# ------------------------------------------------------------------------ folder batch mode


def test_list_images_and_resume_plan(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("b.tif", "a.TIF", "c.h5", "notes.txt", ".hidden.tif", ".d.tif.partial-12"):
        (raw / name).write_bytes(b"x")
    (raw / "sub").mkdir()
    (raw / "e.zarr").mkdir()
    images = list_images(raw)
    assert [p.name for p in images] == ["a.TIF", "b.tif", "c.h5", "e.zarr"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.tif").write_bytes(b"done")
    todo = plan_batch(images, out)
    assert [(s.name, o.name) for s, o in todo] == [("a.TIF", "a.TIF"), ("c.h5", "c.h5"), ("e.zarr", "e.zarr")]
    assert [o.name for _, o in plan_batch(images, out, suffix=".ome.tif")] == [
        "a.ome.tif", "b.ome.tif", "c.ome.tif", "e.ome.tif"]
    assert len(plan_batch(images, out, overwrite=True)) == 4
    with pytest.raises(OutputError, match="overwrite the input"):
        plan_batch(images, raw)
    with pytest.raises(OutputError, match="both be written"):
        plan_batch([raw / "b.tif", raw / "b.h5"], out, suffix=".h5")
    with pytest.raises(InputError, match="holds no images"):
        list_images(out.parent / "raw" / "sub")


def test_list_images_empty_folder(tmp_path):
    with pytest.raises(InputError, match="holds no images"):
        list_images(tmp_path)
    with pytest.raises(InputError, match="is not a folder"):
        list_images(tmp_path / "nope")


def test_runtime_io_imports_neither_torch_nor_onnx():
    code = (
        "import sys, scopert.runtime.io as io; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'zarr')); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
