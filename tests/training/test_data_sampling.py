"""TIFF pair loading, percentile normalization, patch clipping, the foreground rule and rotate_and_flip."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile

from scopert.errors import ConfigError, InputError
from scopert.training.rcan.data import (
    ImagePair,
    PairData,
    PatchSampler,
    check_same_ndim,
    collect_pairs,
    load_pairs,
    percentile_normalize,
    resolve_patch_shape,
    rotate_and_flip,
)


def _write_pairs(root, shapes, gt_shapes=None, rng=None):
    rng = rng or np.random.default_rng(0)
    (root / "raw").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    for i, shape in enumerate(shapes):
        gshape = gt_shapes[i] if gt_shapes else shape
        tifffile.imwrite(root / "raw" / f"img{i:02d}.tif", rng.integers(0, 4000, shape).astype(np.uint16), photometric="minisblack")
        tifffile.imwrite(root / "gt" / f"img{i:02d}.tif", rng.integers(0, 4000, gshape).astype(np.uint16), photometric="minisblack")
    return {"raw": str(root / "raw"), "gt": str(root / "gt")}


def test_pairs_come_in_seed_order(tmp_path):
    d = _write_pairs(tmp_path, [(20, 20)] * 3)
    extra = {"raw": str(tmp_path / "raw" / "img02.tif"), "gt": str(tmp_path / "gt" / "img02.tif")}
    pairs = collect_pairs(d, [extra])
    assert [p.raw.name for p in pairs] == ["img02.tif", "img00.tif", "img01.tif", "img02.tif"]
    assert all(p.raw.name == p.gt.name for p in pairs)


def test_mismatched_counts_name_both_folders(tmp_path):
    d = _write_pairs(tmp_path, [(20, 20)] * 3)
    (tmp_path / "gt" / "img01.tif").unlink()
    with pytest.raises(InputError) as err:
        collect_pairs(d, None)
    msg = str(err.value)
    assert "3 TIFF files" in msg and "holds 2" in msg and str(tmp_path / "gt") in msg


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "gt").mkdir()
    with pytest.raises(InputError, match="no TIFF file"):
        collect_pairs({"raw": str(tmp_path / "raw"), "gt": str(tmp_path / "gt")}, None)
    with pytest.raises(InputError, match="is not a folder"):
        collect_pairs({"raw": str(tmp_path / "nope"), "gt": str(tmp_path / "gt")}, None)


def test_shape_mismatch_names_the_files(tmp_path):
    d = _write_pairs(tmp_path, [(20, 20), (20, 20)], gt_shapes=[(20, 20), (20, 21)])
    with pytest.raises(InputError) as err:
        load_pairs(collect_pairs(d, None))
    msg = str(err.value)
    assert "img01.tif" in msg and "(20, 20)" in msg and "(20, 21)" in msg


def test_mixed_ndim_is_refused(tmp_path):
    d = _write_pairs(tmp_path, [(20, 20), (4, 20, 20)])
    data = load_pairs(collect_pairs(d, None))
    with pytest.raises(InputError) as err:
        check_same_ndim(data)
    assert "2D" in str(err.value) and "3D" in str(err.value) and "img00.tif" in str(err.value)


def test_nan_and_4d_are_refused(tmp_path):
    raw, gt = tmp_path / "r.tif", tmp_path / "g.tif"
    bad = np.ones((8, 8), np.float32)
    bad[2, 3] = np.nan
    tifffile.imwrite(raw, bad)
    tifffile.imwrite(gt, np.ones((8, 8), np.float32))
    with pytest.raises(InputError, match="NaN or Inf"):
        load_pairs([ImagePair(raw, gt)])
    tifffile.imwrite(raw, np.ones((2, 3, 8, 8), np.float32), photometric="minisblack")
    tifffile.imwrite(gt, np.ones((2, 3, 8, 8), np.float32), photometric="minisblack")
    with pytest.raises(InputError, match="single-channel"):
        load_pairs([ImagePair(raw, gt)])


def test_percentile_normalize_matches_the_formula():
    img = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    low, high = np.percentile(img, 2), np.percentile(img, 99.9)
    out = percentile_normalize(img)
    assert out.dtype == np.float32
    # 2nd percentile of 0..999 is 19.98, 99.9th is 998.001: values outside are not clipped.
    assert low == pytest.approx(19.98) and high == pytest.approx(998.001)
    assert out[0, 0] == pytest.approx((0 - low) / (high - low + 1e-6), rel=1e-6)
    assert out.min() < 0 and out.max() > 1


def test_patch_is_clipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="scopert.training.rcan.data"):
        patch = resolve_patch_shape(None, 3, [(40, 300, 300), (10, 200, 500)])
    assert patch == (10, 200, 256)
    assert "clipped to [10, 200, 256]" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scopert.training.rcan.data"):
        assert resolve_patch_shape([32, 32], 2, [(64, 64)]) == (32, 32)
    assert "clipped" not in caplog.text
    with pytest.raises(ConfigError, match="images are 3D"):
        resolve_patch_shape([32, 32], 3, [(8, 64, 64)])


def _pair(raw, gt, name="x"):
    return PairData(ImagePair(f"{name}_raw.tif", f"{name}_gt.tif"), raw.astype(np.float32), gt.astype(np.float32))


def test_mostly_dark_gt_rejects_patches():
    # GT is bright (1.0) only in the left 16 columns of a 64x64 image; patches are 16x16.
    gt = np.zeros((64, 64), np.float32)
    gt[:, :16] = 1.0
    raw = np.tile(np.arange(64, dtype=np.float32), (64, 1))  # raw value = column index
    sampler = PatchSampler([_pair(raw, gt)], (16, 16), intensity_threshold=0.25, area_ratio_threshold=0.5,
                           augment=False, seed=1)
    lefts = [int(sampler.sample()[0][0, 0]) for _ in range(200)]
    # Accepted patches have >= 128 of 256 bright pixels: left column <= 8.
    assert max(lefts) <= 8 and sampler.failed_samples == 0
    # Without the rule, corners spread over the whole range 0..48.
    free = PatchSampler([_pair(raw, gt)], (16, 16), intensity_threshold=0.0, area_ratio_threshold=0.5,
                        augment=False, seed=1)
    assert max(int(free.sample()[0][0, 0]) for _ in range(200)) > 30


def test_all_dark_gt_keeps_last_patch_and_counts(caplog):
    gt = np.zeros((32, 32), np.float32)
    sampler = PatchSampler([_pair(gt, gt)], (8, 8), intensity_threshold=0.25, area_ratio_threshold=0.1,
                           augment=False, seed=0)
    with caplog.at_level(logging.WARNING, logger="scopert.training.rcan.data"):
        x, y = sampler.sample()
    assert x.shape == (8, 8) and sampler.failed_samples == 1 and "512 tries" in caplog.text


@pytest.mark.parametrize("shape", [(8, 8), (4, 8, 8)])
def test_augmentation_is_equal_on_x_and_y(shape):
    rng = np.random.default_rng(3)
    x = rng.random(shape).astype(np.float32)
    seen = set()
    for _ in range(64):
        xa, ya = rotate_and_flip(x, x * 2 + 1, rng)
        np.testing.assert_array_equal(ya, xa * 2 + 1)
        assert sorted(xa.ravel()) == sorted(x.ravel())  # a permutation of the voxels
        seen.add(xa.tobytes())
    # 2D: 4 rotations x 2 flips = 8 distinct results; 3D: x2 for the Z flip = 16.
    assert len(seen) == (8 if len(shape) == 2 else 16)


def test_3d_augmentation_keeps_z_slices_as_planes():
    x = np.zeros((4, 8, 8), np.float32)
    x[1] = 1.0  # one full plane
    rng = np.random.default_rng(0)
    for _ in range(20):
        xa, _ = rotate_and_flip(x, x, rng)
        planes = [z for z in range(4) if xa[z].all()]
        assert planes in ([1], [2])  # Z flip maps plane 1 to plane 2, rotation keeps it a plane


def test_non_square_patch_with_augmentation_is_refused():
    img = np.ones((32, 48), np.float32)
    with pytest.raises(ConfigError, match="square"):
        PatchSampler([_pair(img, img)], (16, 24), intensity_threshold=0, area_ratio_threshold=0, augment=True)


def test_batches_are_reproducible_and_resumable():
    rng = np.random.default_rng(0)
    img = rng.random((40, 40)).astype(np.float32)
    a = PatchSampler([_pair(img, img)], (16, 16), intensity_threshold=0.25, area_ratio_threshold=0.3,
                     augment=True, seed=5)
    x1, y1 = a.next_batch(3)
    assert x1.shape == (3, 1, 16, 16) and x1.dtype == np.float32
    state = a.state_dict()
    x2, _ = a.next_batch(3)
    b = PatchSampler([_pair(img, img)], (16, 16), intensity_threshold=0.25, area_ratio_threshold=0.3,
                     augment=True, seed=99)
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.next_batch(3)[0], x2)
    c = PatchSampler([_pair(img, img)], (16, 16), intensity_threshold=0.25, area_ratio_threshold=0.3,
                     augment=True, seed=5)
    np.testing.assert_array_equal(c.next_batch(3)[0], x1)
