"""`scopert stream --replay`: a real 2D+t stack (trackpy bulk water) at a rate the machine sustains and at
one it cannot, exact drop accounting, output written, and the bad inputs (rate, axes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from scopert.cli import cli
from scopert.errors import ConfigError, InputError
from scopert.runtime import load
from scopert.runtime.tools.replay import read_replay_stack, replay
from tests.runtime.graphs import conv_stack


@pytest.fixture(scope="module")
def model2d(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "conv2d.onnx"
    conv_stack(path, ndim=2, layers=2, channels=4)
    return path


@pytest.fixture(scope="module")
def movie(data_dir):
    frames = read_replay_stack(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")
    assert frames.shape == (40, 424, 640) and frames.dtype == np.uint8
    return frames[:, 100:228, 200:328]  # small crops keep the test fast; real frames, real motion


def test_sustained_rate_keeps_up_and_writes_output(model2d, movie, tmp_path):
    model = load(model2d, backend="ort", device="cpu")
    out = tmp_path / "restored.tif"
    rep = replay(model, movie[:8], fps=4, on_full="drop", max_queue=4, output=out, tile=128)
    assert (rep.received, rep.processed, rep.dropped, rep.produced) == (8, 8, 0, 8)
    assert rep.kept_up and rep.verdict.startswith("kept up at 4 fps")
    assert rep.latency_p50_s <= rep.latency_p99_s
    written = tifffile.imread(out)
    assert written.shape == (8, 128, 128)
    assert np.allclose(written[3], model.predict(movie[3], tile=128), atol=1e-5)


def test_unsustainable_rate_drops_exactly(model2d, movie):
    model = load(model2d, backend="ort", device="cpu")
    seen = []
    rep = replay(model, movie, fps=1e6, on_full="drop", max_queue=1, on_output=seen.append, tile=128)
    assert rep.received == 40 and rep.dropped > 0
    assert rep.received == rep.processed + rep.dropped
    assert rep.produced == rep.processed == len(seen)
    assert not rep.kept_up and f"{rep.dropped} of 40 frames dropped" in rep.verdict


def test_block_mode_never_drops_but_says_it_fell_behind(model2d, movie):
    model = load(model2d, backend="ort", device="cpu")
    rep = replay(model, movie[:10], fps=1e6, on_full="block", max_queue=1, tile=128)
    assert (rep.received, rep.dropped, rep.produced) == (10, 0, 10)
    assert not rep.kept_up and "did NOT keep up" in rep.verdict


@pytest.mark.parametrize("fps", [0, -5])
def test_bad_rate_is_a_clear_error(model2d, movie, fps):
    with pytest.raises(ConfigError, match="positive number of frames per second"):
        replay(load(model2d, backend="ort", device="cpu"), movie[:2], fps=fps)


def test_cli_stream(model2d, data_dir, tmp_path):
    src = tmp_path / "movie.tif"
    tifffile.imwrite(src, read_replay_stack(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")[:6, :128, :128],
                     imagej=True, metadata={"axes": "TYX"})
    res = CliRunner().invoke(cli, ["stream", "--replay", str(src), "--fps", "3", "-m", str(model2d), "-o",
                                   str(tmp_path / "o.tif"), "--backend", "ort", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["received"] == 6 and rep["received"] == rep["processed"] + rep["dropped"]
    assert tifffile.imread(tmp_path / "o.tif").shape[0] == rep["produced"]
    res = CliRunner().invoke(cli, ["stream", "--replay", str(src), "--fps", "0", "-m", str(model2d), "-o",
                                   str(tmp_path / "o2.tif")])
    assert res.exit_code != 0 and "--fps 0 is not a frame rate" in str(res.exception)


def test_replay_file_with_wrong_axes(data_dir, tmp_path):
    vol = tmp_path / "volume.tif"
    tifffile.imwrite(vol, np.zeros((4, 32, 32), np.uint16), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(InputError, match="axes zyx.*needs time first"):
        read_replay_stack(vol)
    with pytest.raises(InputError, match="has 2 axes"):
        read_replay_stack(data_dir / "stardist_nuclei_2d" / "stardist_dsb2018_img2d.tif")


def test_stream_output_is_a_time_series_with_sizes_and_the_dropped_frames_named(model2d, movie, tmp_path):
    """Issue 20: the output was a plain float32 TIFF with axes QYX, no frame interval, no word of which frames
    were dropped."""
    from scopert.runtime.io import read_image
    from scopert.runtime.io.physical import PhysicalSizes

    model = load(model2d, backend="ort", device="cpu")
    out = tmp_path / "restored.tif"
    physical = PhysicalSizes({"y": 0.65, "x": 0.65, "t": 0.05}, {"y": "micrometer", "x": "micrometer", "t": "second"})
    rep = replay(model, movie, fps=1e6, on_full="drop", max_queue=1, output=out, tile=128, physical=physical)
    assert rep.dropped > 0 and len(rep.dropped_frames) == rep.dropped
    kept = [i for i in range(40) if i not in rep.dropped_frames]
    with read_image(out) as img:
        assert img.axes == "tyx" and img.shape[0] == rep.produced == len(kept)
        assert img.physical.get("x") == pytest.approx(0.65) and img.physical.get("t") == pytest.approx(0.05)
        written = np.asarray(img.array)
    assert np.allclose(written[-1], model.predict(movie[kept[-1]], tile=128), atol=1e-5)  # page k = kept[k]
    with tifffile.TiffFile(out) as tif:  # an independent reader sees the time axis and the pixel size
        assert tif.series[0].axes == "TYX"
        num, den = tif.pages[0].tags["XResolution"].value
        assert den / num == pytest.approx(0.65e-4)  # centimetres per pixel
