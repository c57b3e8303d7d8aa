"""The SHINE blind-spot family through export and the lean runtime, on a real brightfield time series.

Proves: export is fast (the declared structural halo replaces the minutes-long probe) and the card carries the frame
window, per-frame z-score and the min-max remap; offline ``predict`` of a movie equals ``Model.stream`` of the same
frames; the windows are mirrored at both ends; the output is the min-max remap onto the raw centre frame; and a movie
or stream shorter than the window is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import tifffile
import torch

from scopert.errors import InputError
from scopert.export import export_run
from scopert.runtime import load
from scopert.runtime.model import Model
from scopert.training.blindspot.model import STRUCTURAL_HALO, build_model
from scopert.training.common.runfolder import RunInfo, save_checkpoint, write_run_info

MODEL = {"name": "3x3_blind", "frame_num": 3, "filter": 8, "in_channels": 1, "out_channels": 1, "pad_mode": "seed"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shine")
    torch.manual_seed(0)
    net = build_model(MODEL)
    write_run_info(RunInfo(folder / "run", "blindspot", MODEL, {"seed": 0}, {"format": "scopert-train"}))
    save_checkpoint(folder / "run" / "checkpoints" / "best.pt", {"model_state_dict": net.state_dict(), "epoch": 0})
    start = time.monotonic()
    card = export_run(folder / "run", folder / "shine.onnx")
    seconds = time.monotonic() - start
    return card, seconds, folder / "shine.onnx"


@pytest.fixture(scope="module")
def movie(data_dir) -> np.ndarray:
    """Four real consecutive video frames (trackpy bulk water, uint8), 64 x 64."""
    frames = tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif", key=range(4))
    return frames[:, 100:164, 200:264]


@pytest.fixture(scope="module")
def model(exported) -> Model:
    return load(exported[2], backend="ort")


def test_export_is_fast_and_the_card_describes_the_window(exported):
    card, seconds, _ = exported
    assert seconds < 30, f"export took {seconds:.1f} s"
    assert card.input.axes == "btyx" and card.input.time_window == 3
    assert card.input.divisor == {"y": 64, "x": 64}
    assert card.normalization.kind == "zscore" and card.normalization.per_frame
    assert card.postprocess == {"kind": "minmax_to_centre_frame"}
    assert card.halo == {"y": STRUCTURAL_HALO[1], "x": STRUCTURAL_HALO[1]} and not card.tile_invariant
    check = card.verification["onnx_vs_torch"]
    assert check["max_abs_error"] <= 1e-4 and check["receptive_field"]["method"] == "declared"


def test_offline_movie_equals_the_stream_and_the_ends_are_mirrored(model, movie):
    offline = model.predict(movie, axes="tyx")
    assert offline.shape == movie.shape and offline.dtype == np.float32
    streamed = np.stack(list(model.stream(iter(movie))))
    np.testing.assert_array_equal(streamed, offline)
    assert model.last_stream.stats.produced == 4 and model.last_stream.stats.dropped == 0
    # Frame 0 sees (1, 0, 1) and the last frame (2, 3, 2), as the seed's idxreturn.
    assert model.frame_window(4, 0) == [1, 0, 1] and model.frame_window(4, 3) == [2, 3, 2]
    np.testing.assert_allclose(model.predict_window(movie[[1, 0, 1]], movie[0]), offline[0], atol=1e-5)
    np.testing.assert_allclose(model.predict_window(movie[[2, 3, 2]], movie[3]), offline[3], atol=1e-5)
    # A different (unmirrored, clamped) end window changes the result: the mirroring is really used.
    clamped = model.predict_window(movie[[0, 0, 1]], movie[0])
    assert float(np.max(np.abs(clamped - offline[0]))) > 1e-3 * float(np.ptp(movie[0]))


def test_output_is_the_min_max_remap_onto_the_raw_centre_frame(model, movie):
    window = movie[:3]
    out = model.predict_window(window, movie[1])
    assert abs(float(out.min()) - float(movie[1].min())) < 1e-3
    assert abs(float(out.max()) - float(movie[1].max())) < 1e-3
    plain = Model(model.backend, dataclasses.replace(model.card, postprocess={}), model.path)
    y = plain.predict_window(window, movie[1])  # z-score units, no remap
    lo, hi = float(movie[1].min()), float(movie[1].max())
    want = (y - y.min()) / (y.max() - y.min()) * (hi - lo) + lo
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-3)
    # Per-frame z-score in, min-max onto the raw frame out: an affine change of the movie passes straight through.
    scaled = model.predict_window(2.5 * window.astype(np.float32) + 40.0, 2.5 * movie[1].astype(np.float32) + 40.0)
    np.testing.assert_allclose(scaled, 2.5 * out + 40.0, rtol=0, atol=1e-2)


def test_fewer_frames_than_the_window_is_refused_offline_and_in_a_stream(model, movie):
    with pytest.raises(InputError, match="2 frames, fewer than the model's time window of 3"):
        model.predict(movie[:2], axes="tyx")
    with pytest.raises(InputError, match="stream ended after 2 frames, fewer than the model's time window of 3"):
        list(model.stream(iter(movie[:2])))

