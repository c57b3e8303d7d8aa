"""Crop stitching equals whole-image inference for tile-invariant models; blend beats crop on seams
for a tile-variant one. Inputs are real images from ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from scopert.runtime import load
from tests.runtime.graphs import conv_stack, whole_image_reference


@pytest.fixture(scope="module")
def w2s(data_dir):
    return tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif").astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def isbi(data_dir):
    return tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif").astype(np.float32) / 255.0


def _check(model_path, image, expect, **kw):
    model = load(model_path)
    got = model.predict(image, stitch="crop", **kw)
    assert got.shape == expect.shape
    err = float(np.abs(got - expect).max())
    assert err < 1e-5, err
    return err


def test_2d_odd_shape(tmp_path, w2s):
    path = tmp_path / "m.onnx"
    conv_stack(path, ndim=2, layers=3)
    image = w2s[0, :203, :157]
    ref = whole_image_reference(path, image[None, None], 3)[0, 0]
    _check(path, image, ref, tile=(48, 40), batch=3)


def test_3d_odd_shape(tmp_path, isbi):
    path = tmp_path / "m3.onnx"
    conv_stack(path, ndim=3, layers=2, channels=3)
    image = isbi[:13, :61, :50]
    ref = whole_image_reference(path, image[None, None], 2)[0, 0]
    _check(path, image, ref, tile=(8, 24, 20), batch=2)


def test_2d_plus_t(tmp_path, w2s):
    """A 2D+t model tiles over y and x and slides over time (t is a tiled axis with its own halo)."""
    path = tmp_path / "mt.onnx"
    conv_stack(path, ndim=3, layers=2, axes="bctyx", time_window=6)
    movie = w2s[:, :70, :90]  # 12 frames
    ref = whole_image_reference(path, movie[None, None], 2)[0, 0]
    _check(path, movie, ref, tile=(6, 32, 32))


def test_image_smaller_than_one_tile(tmp_path, w2s):
    path = tmp_path / "m.onnx"
    conv_stack(path, ndim=2, layers=3, divisor=8)
    image = w2s[1, :19, :23]
    ref = whole_image_reference(path, image[None, None], 3, divisor=8)[0, 0]
    _check(path, image, ref, tile=(64, 64))


def test_upsampling_2x(tmp_path, w2s):
    path = tmp_path / "up.onnx"
    conv_stack(path, ndim=2, layers=2, upsample=2)
    image = w2s[2, :77, :66]
    ref = whole_image_reference(path, image[None, None], 2, upsample=2)[0, 0]
    assert ref.shape == (154, 132)
    _check(path, image, ref, tile=(24, 24))


def test_multichannel_in_and_out(tmp_path, w2s):
    path = tmp_path / "mc.onnx"
    conv_stack(path, ndim=2, layers=3, cin=2, cout=3)
    image = w2s[3:5, :90, :71]  # (c, y, x)
    ref = whole_image_reference(path, image[None], 3)[0]
    _check(path, image, ref, tile=(32, 40), axes="cyx")


def test_output_channels_added_first_for_single_channel_input(tmp_path, w2s):
    path = tmp_path / "c3.onnx"
    conv_stack(path, ndim=2, layers=1, cout=3)
    out = load(path).predict(w2s[0, :40, :40], stitch="crop", tile=(16, 16))
    assert out.shape == (3, 40, 40)


def seam_error(got: np.ndarray, ref: np.ndarray) -> float:
    """The strongest straight seam: for every line between two pixel rows (or columns), the mean jump of
    the error field across it; the maximum over all lines. Averaging along the line removes pixel noise
    and leaves the step that a tile border leaves."""
    err = got.astype(np.float64) - ref
    lines = []
    for axis in range(err.ndim):
        jump = np.abs(np.diff(err, axis=axis))
        other = tuple(a for a in range(err.ndim) if a != axis)
        lines.append(jump.mean(axis=other).max())
    return float(max(lines))


def test_blend_beats_crop_for_tile_variant_model(tmp_path, w2s):
    """A model that subtracts the tile's mean cannot be tiled exactly; blend must hide the seams better."""
    path = tmp_path / "gm.onnx"
    conv_stack(path, ndim=2, layers=2, global_mean=True)
    image = w2s[4, :256, :256]
    ref = whole_image_reference(path, image[None, None], 2)[0, 0]
    model = load(path)
    crop = seam_error(model.predict(image, stitch="crop", tile=(64, 64)), ref)
    blend = seam_error(model.predict(image, stitch="blend", tile=(64, 64)), ref)
    print(f"tile-variant model, seam error (strongest line jump of the error): crop {crop:.4f}, blend {blend:.4f}")
    assert blend < 0.75 * crop


def test_blend_is_exact_for_tile_invariant_model_inside(tmp_path, w2s):
    """Blending identical overlapping predictions must give the same prediction (weights normalize)."""
    path = tmp_path / "m.onnx"
    conv_stack(path, ndim=2, layers=2)
    image = w2s[5, :150, :130]
    ref = whole_image_reference(path, image[None, None], 2)[0, 0]
    got = load(path).predict(image, stitch="blend", tile=(48, 48), overlap=(20, 20))
    assert float(np.abs(got - ref).max()) < 1e-5
