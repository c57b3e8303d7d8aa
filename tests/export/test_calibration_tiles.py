"""Defect 8 of issue 15: FP16 calibration tiles are the tiles the runtime feeds the backend, cut by the runtime.

A recording backend captures every batch ``Model.predict`` sends; each calibration tile must be one of them,
bit for bit. For the per-frame z-score blind-spot layout the old cutter z-scored each cut tile, while the
runtime z-scores whole frames of the window: different activation ranges, so that case is the sharp one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from scopert.card import ModelCard, Normalization, TensorSpec
from scopert.export.precision import load_calibration
from scopert.runtime.backends.base import Backend, BackendInfo
from scopert.runtime.model import Model


class RecordingBackend(Backend):
    """Records the model-layout batches it is fed; returns zeros of the card's output shape."""

    def __init__(self, card: ModelCard) -> None:
        self.card, self.batches = card, []
        self.info = BackendInfo(name="record", device="cpu", precision="fp32", providers=[], reason="test")
        self.metadata: dict[str, str] = {}
        self.input_name, self.output_name = card.input.name, card.output.name

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.batches.extend(np.array(b, np.float32) for b in batch)
        dims = dict(zip(self.card.input.axes, batch.shape))
        shape = [self.card.output.channels if a == "c" else dims[a] for a in self.card.output.axes]
        return np.zeros(shape, np.float32)


def _is_runtime_tile(tile: np.ndarray, fed: list[np.ndarray]) -> bool:
    return any(f.shape == tile.shape and np.array_equal(f, tile) for f in fed)


def test_blindspot_calibration_tiles_equal_the_runtime_tiles(tmp_path, data_dir):
    movie = tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif", key=range(5))
    movie = movie[:, 100:228, 200:328].astype(np.float32)  # 5 frames of 128 x 128, real video
    calib = tmp_path / "movie.tif"
    tifffile.imwrite(calib, movie)
    card = ModelCard(
        family="blindspot", name="shine",
        input=TensorSpec("frames", "btyx", channels=1, divisor={"y": 16, "x": 16}, time_window=3),
        output=TensorSpec("denoised", "bcyx", channels=1), halo={"y": 4, "x": 4}, tile_invariant=False,
        normalization=Normalization(kind="zscore", per_frame=True), postprocess={"kind": "minmax_to_centre_frame"})
    card.validate()
    tiles = load_calibration(card, [calib], tiles=6, tile={"y": 64, "x": 64})
    assert tiles.shape == (6, 3, 64, 64)
    backend = RecordingBackend(card)
    Model(backend, card, Path("shine.onnx")).predict(movie, tile=(64, 64), axes="tyx")
    assert all(_is_runtime_tile(t, backend.batches) for t in tiles)
    # the old way, each cut tile z-scored on its own, differs from every tile the runtime feeds
    own = (tiles[0] * 1.0 - tiles[0].mean(axis=(1, 2), keepdims=True))
    own /= np.maximum(own.std(axis=(1, 2), keepdims=True), 1e-6)
    assert not _is_runtime_tile(own.astype(np.float32), backend.batches)


def test_3d_percentile_calibration_tiles_equal_the_runtime_tiles(tmp_path, data_dir):
    vol = tifffile.imread(str(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif"))[:16, :96, :96]
    calib = tmp_path / "vol.tif"
    tifffile.imwrite(calib, vol)
    card = ModelCard(
        family="test", name="net", input=TensorSpec("input", "bczyx", channels=1, divisor={"z": 2, "y": 4, "x": 4}),
        output=TensorSpec("output", "bczyx", channels=1), halo={"z": 2, "y": 3, "x": 3}, tile_invariant=True,
        normalization=Normalization(kind="percentile", pmin=1.0, pmax=99.8))
    card.validate()
    tiles = load_calibration(card, [calib], tiles=4, tile={"z": 8, "y": 32, "x": 32})
    assert tiles.shape == (4, 1, 8, 32, 32)
    backend = RecordingBackend(card)
    Model(backend, card, Path("net.onnx")).predict(vol, tile=(8, 32, 32))
    assert all(_is_runtime_tile(t, backend.batches) for t in tiles)
    assert float(tiles.min()) < 0.2 and float(tiles.max()) > 0.8  # normalized over the whole volume, not per tile
