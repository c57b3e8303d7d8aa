"""TIFF I/O: round trips, real files, memmaps, slabs, streaming, truncated files, atomic writes."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest
import tifffile

from scopert.errors import ConfigError, InputError, OutputError, RunError
from scopert.runtime.io import (
    TiffSlabReader,
    TiffStreamWriter,
    read_image,
    read_slab,
    read_tiff,
    to_bit_depth,
    write_image,
    write_tiff,
)

W2S = "w2s_8bit_pairs/w2s_avg1_noisy.tif"
CYLINDRA = "em_misc/cylindra_13pf_MT.tif"
CONVALLARIA = "convallaria_pn2v/convallaria_pn2v_frame0000.tif"


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------ round trips


def test_imagej_round_trip_reorders_to_tzcyx(tmp_path):
    rng = np.random.default_rng(0)
    czyx = rng.random((3, 5, 24, 20), dtype=np.float32)
    out = write_tiff(tmp_path / "a.tif", czyx, "czyx", fmt="imagej")
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and len(tif.series) == 1
        assert tif.series[0].axes == "ZCYX"
    im = read_tiff(out)
    assert im.axes == "zcyx" and im.source_axes == "ZCYX"
    np.testing.assert_array_equal(im.array, czyx.transpose(1, 0, 2, 3))
    assert not im.axes_guessed


def test_ome_round_trip_keeps_order_and_channel_names(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 60000, size=(2, 3, 4, 16, 18), dtype=np.uint16)  # t c z y x
    out = write_image(tmp_path / "b.ome.tif", data, "tczyx", channel_names=["raw", "restored", "gt"])
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and len(tif.series) == 1
    im = read_image(out)
    assert im.axes == "tczyx"
    assert im.channel_names == ["raw", "restored", "gt"]
    np.testing.assert_array_equal(im.array, data)


def test_ome_moves_yx_last(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)  # y x c
    im = read_tiff(write_tiff(tmp_path / "c.tif", data, "yxc", fmt="ome"))
    assert im.axes == "cyx"
    np.testing.assert_array_equal(im.array, data.transpose(2, 0, 1))


@pytest.mark.parametrize("fmt", ["imagej", "ome"])
@pytest.mark.parametrize("bits", [8, 16, 32])
def test_bit_depths_round_trip(tmp_path, fmt, bits):
    r = np.array([[-0.2, 0.0, 0.5, 0.999999], [1.0, 1.3, 0.25, 0.0001]], dtype=np.float32)
    out = write_tiff(tmp_path / f"r{bits}.tif", r, "yx", fmt=fmt, bits=bits)
    back = read_tiff(out).array
    expected = {
        8: np.array([[0, 0, 127, 254], [255, 255, 63, 0]], np.uint8),      # truncation: 255*0.5 = 127.5 -> 127
        16: np.array([[0, 0, 32767, 65534], [65535, 65535, 16383, 6]], np.uint16),
        32: r,                                                             # unchanged, not clipped
    }[bits]
    assert back.dtype == expected.dtype
    np.testing.assert_array_equal(back, expected)


def test_to_bit_depth_rejects_other_depths():
    with pytest.raises(ConfigError, match="8, 16 or 32"):
        to_bit_depth(np.zeros((2, 2), np.float32), 12)


def test_imagej_rejects_int32_with_fix(tmp_path):
    with pytest.raises(ConfigError, match="bits=8, 16 or 32"):
        write_tiff(tmp_path / "i.tif", np.zeros((4, 4), np.int32), "yx", fmt="imagej")
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------ real data


def test_reads_real_compressed_w2s_stack(data_dir):
    im = read_image(data_dir / W2S)
    assert im.shape == (12, 512, 512) and im.dtype == np.uint8
    assert im.source_axes == "QYX" and im.axes == "zyx" and im.axes_guessed
    assert not isinstance(im.array, np.memmap)  # zlib: decoded into memory
    # each W2S image is contrast-stretched to 0..255 by its authors
    assert [int(im.array[i].max()) for i in range(12)] == [255] * 12
    np.testing.assert_array_equal(read_slab(data_dir / W2S, 2, 5), im.array[2:5])


def test_reads_real_imagej_stack_as_memmap(data_dir):
    im = read_tiff(data_dir / CYLINDRA)
    assert isinstance(im.array, np.memmap) and im.array.mode == "r"
    assert im.shape == (36, 206, 94) and im.axes == "zyx"
    ref = tifffile.imread(data_dir / CYLINDRA)
    np.testing.assert_array_equal(im.array, ref)
    with TiffSlabReader(data_dir / CYLINDRA) as reader:
        assert len(reader) == 36 and reader.axes == "zyx"
        np.testing.assert_array_equal(reader.read(30, 99), ref[30:])  # clipped to the series
        assert reader.read(5, 5).shape == (0, 206, 94)


def test_reads_time_series_axes(data_dir):
    im = read_tiff(data_dir / "trackpy_bulk_water/bulk_water_first40.tif")
    assert im.axes == "tyx" and im.shape == (40, 424, 640)


# ------------------------------------------------------------------------ memmap, slabs, memory


def test_uncompressed_output_reads_as_memmap_compressed_does_not(tmp_path):
    data = np.random.default_rng(2).random((8, 64, 64), dtype=np.float32)
    plain = read_tiff(write_tiff(tmp_path / "plain.tif", data, "zyx"))
    packed = read_tiff(write_tiff(tmp_path / "packed.tif", data, "zyx", compression="zlib"))
    assert isinstance(plain.array, np.memmap)
    assert not isinstance(packed.array, np.memmap)
    np.testing.assert_array_equal(plain.array, data)
    np.testing.assert_array_equal(packed.array, data)
    assert read_tiff(tmp_path / "plain.tif", memmap=False).array.__class__ is np.ndarray


def _plane_pattern(z0: int, z1: int, ny: int = 256, nx: int = 256) -> np.ndarray:
    z, y, x = np.ogrid[z0:z1, :ny, :nx]
    return ((z * 1000 + y * 3 + x) % 65536).astype(np.uint16)


def test_slab_reading_memory_is_bounded_by_the_slab(tmp_path):
    vol = _plane_pattern(0, 128)  # 16 MiB
    path = write_tiff(tmp_path / "big.tif", vol, "zyx")
    zlib = write_tiff(tmp_path / "big_zlib.tif", vol, "zyx", compression="zlib")
    del vol
    slab_bytes = 4 * 256 * 256 * 2  # 512 KiB
    for p in (path, zlib):
        with TiffSlabReader(p) as reader:
            assert not isinstance(reader.read(0, 1), np.memmap)
            tracemalloc.start()
            mismatches, peak = 0, 0
            for z in range(0, 128, 4):
                tracemalloc.reset_peak()
                before = tracemalloc.get_traced_memory()[0]
                slab = reader.read(z, z + 4)
                peak = max(peak, tracemalloc.get_traced_memory()[1] - before)  # what read() allocated
                mismatches += int(np.count_nonzero(slab != _plane_pattern(z, z + 4)))
                del slab
            tracemalloc.stop()
        assert mismatches == 0
        assert peak < 3 * slab_bytes, f"{p.name}: read() peak {peak / 2**20:.2f} MiB for 0.5 MiB slabs"
    tracemalloc.start()
    im = read_tiff(path)
    assert int(im.array[100, 5, 7]) == (100 * 1000 + 15 + 7) % 65536
    float(im.array[100].mean())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(im.array, np.memmap) and peak < 2 * 2**20  # 16 MiB file, memmap touched one plane


# ------------------------------------------------------------------------ streaming writer


@pytest.mark.parametrize("fmt,compression", [("imagej", None), ("ome", "zlib")])
def test_stream_writer_equals_array_and_is_one_series(tmp_path, fmt, compression):
    rng = np.random.default_rng(3)
    data = rng.random((7, 2, 16, 12), dtype=np.float32)  # z c y x
    out = tmp_path / "s.tif"
    with TiffStreamWriter(out, data.shape, data.dtype, "zcyx", fmt=fmt, compression=compression) as w:
        for start, stop in ((0, 3), (3, 4), (4, 7)):  # uneven slabs
            w.write(data[start:stop])
    with tifffile.TiffFile(out) as tif:
        assert len(tif.series) == 1
        assert tif.series[0].shape == data.shape and tif.series[0].axes == "ZCYX"
        assert tif.is_imagej == (fmt == "imagej") and tif.is_ome == (fmt == "ome")
    np.testing.assert_array_equal(read_tiff(out).array, data)
    assert _leftovers(tmp_path) == ["s.tif"]


def test_stream_writer_converts_bits_and_orders_for_imagej(tmp_path):
    data = np.linspace(0, 1, 4 * 3 * 5 * 6, dtype=np.float32).reshape(4, 3, 5, 6)  # t c y x
    out = tmp_path / "t.tif"
    with TiffStreamWriter(out, data.shape, np.float32, "tcyx", bits=16) as w:
        for t in range(4):
            w.write(data[t:t + 1])
    im = read_tiff(out)
    assert im.axes == "tcyx" and im.dtype == np.uint16
    np.testing.assert_array_equal(im.array, to_bit_depth(data, 16))
    assert int(im.array.max()) == 65535 and int(im.array.min()) == 0


def test_stream_writer_memory_is_bounded(tmp_path):
    shape = (64, 256, 256)  # 16 MiB of float32
    slab = np.ones((2, 256, 256), np.float32)
    tracemalloc.start()
    with TiffStreamWriter(tmp_path / "m.tif", shape, np.float32, "zyx", queue_slabs=2) as w:
        for z in range(0, 64, 2):
            w.write(slab * z)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB while streaming 16 MiB"
    back = read_tiff(tmp_path / "m.tif").array
    assert float(back[63].mean()) == 62.0 and float(back[0].max()) == 0.0


def test_stream_writer_exception_inside_block_leaves_nothing(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with TiffStreamWriter(tmp_path / "x.tif", (4, 8, 8), np.uint8, "zyx") as w:
            w.write(np.zeros((2, 8, 8), np.uint8))
            1 / 0
    assert _leftovers(tmp_path) == []


def test_stream_writer_exception_in_slab_iterator_leaves_nothing(tmp_path):
    def slabs():
        yield np.zeros((2, 8, 8), np.uint16)
        raise RuntimeError("camera disconnected")

    with pytest.raises(RuntimeError, match="camera"):
        with TiffStreamWriter(tmp_path / "x.ome.tif", (4, 8, 8), np.uint16, "zyx", fmt="ome") as w:
            for s in slabs():
                w.write(s)
    assert _leftovers(tmp_path) == []


def test_stream_writer_incomplete_is_an_error_and_keeps_old_file(tmp_path):
    out = tmp_path / "x.tif"
    out.write_bytes(b"previous complete result")
    with pytest.raises(RunError, match="only 2 of 4 rows"):
        with TiffStreamWriter(out, (4, 8, 8), np.uint8, "zyx") as w:
            w.write(np.zeros((2, 8, 8), np.uint8))
    assert _leftovers(tmp_path) == ["x.tif"] and out.read_bytes() == b"previous complete result"


def test_stream_writer_disk_error_in_writer_thread_is_reported(tmp_path, monkeypatch):
    def disk_full(path, pages, **kw):
        with open(path, "wb") as f:
            f.write(next(iter(pages)).tobytes())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", disk_full)
    with pytest.raises(OutputError, match="No space left on device") as e:
        with TiffStreamWriter(tmp_path / "d.tif", (40, 8, 8), np.uint8, "zyx", queue_slabs=1) as w:
            for z in range(40):  # the producer must not hang on the full queue once the writer died
                w.write(np.zeros((1, 8, 8), np.uint8))
    assert "check free disk space" in str(e.value)
    assert _leftovers(tmp_path) == []
    assert not any(t.name == "tiff-stream-writer" for t in threading.enumerate())


def test_stream_writer_rejects_bad_slabs_and_unstreamable_axes(tmp_path):
    with pytest.raises(ConfigError, match="use fmt='ome'"):
        TiffStreamWriter(tmp_path / "y.tif", (2, 3, 8, 8), np.float32, "czyx", fmt="imagej")
    with pytest.raises(ConfigError, match=r"does not fit"):
        with TiffStreamWriter(tmp_path / "y.tif", (4, 8, 8), np.uint8, "zyx") as w:
            w.write(np.zeros((2, 8, 9), np.uint8))
    with pytest.raises(ConfigError, match="overrun"):
        with TiffStreamWriter(tmp_path / "y.tif", (4, 8, 8), np.uint8, "zyx") as w:
            w.write(np.zeros((5, 8, 8), np.uint8))
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------ corrupt input, atomic writes


@pytest.mark.parametrize("name", [W2S, CYLINDRA, CONVALLARIA])
@pytest.mark.parametrize("fraction", [0.5, 0.999])
def test_truncated_real_tiff_is_named(tmp_path, data_dir, name, fraction):
    raw = (data_dir / name).read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(InputError, match="truncated or corrupt") as e:
        im = read_tiff(cut)
        np.asarray(im.array).sum()  # must not get here: detection is up front
    assert "cut.tif" in str(e.value)
    with pytest.raises(InputError, match="truncated or corrupt"):
        TiffSlabReader(cut)


def test_text_file_named_tif_is_not_a_tiff(tmp_path):
    fake = tmp_path / "notes.tif"
    fake.write_text("exposure 50 ms\n" * 20)
    with pytest.raises(InputError, match="not a TIFF file") as e:
        read_image(fake)
    assert "notes.tif" in str(e.value)
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(InputError, match="not a TIFF"):
        read_tiff(tmp_path / "empty.tif")
    with pytest.raises(InputError, match="does not exist"):
        read_tiff(tmp_path / "missing.tif")


def test_interrupted_write_tiff_leaves_old_output(tmp_path, monkeypatch):
    out = tmp_path / "r.tif"
    write_tiff(out, np.full((4, 4), 7, np.uint8), "yx")

    def dies_half_way(path, data, **kw):
        with open(path, "wb") as f:
            f.write(b"II*\x00partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        write_tiff(out, np.zeros((4, 4), np.uint8), "yx")
    monkeypatch.undo()
    assert _leftovers(tmp_path) == ["r.tif"]
    assert int(read_tiff(out).array.sum()) == 7 * 16


def test_inputs_are_opened_read_only(tmp_path, data_dir):
    src = tmp_path / "in.tif"
    write_tiff(src, np.ones((3, 8, 8), np.uint16), "zyx")
    src.chmod(0o444)
    im = read_tiff(src)
    with pytest.raises((ValueError, OSError)):
        im.array[0, 0, 0] = 5  # read-only memmap
    assert int(read_tiff(src).array.sum()) == 3 * 64
