"""SHINE training data on real frames: reading folders and stacks, mirrored windows, the seed's z-score and added
noise, and the refusals (fewer frames than frame_num, mixed sizes, bad config)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from scopert.errors import ConfigError, InputError
from scopert.training.blindspot.data import (
    FrameAugment,
    FrameSampler,
    load_frames,
    resize_nearest,
    validation_items,
    window_indices,
    zscore_frames,
)
from scopert.training.blindspot.train import load_blindspot_config


@pytest.fixture(scope="module")
def bulk_water(data_dir) -> np.ndarray:
    """Six real brightfield video frames (a true time series), cropped to 96 x 128."""
    return tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif", key=range(6))[:, :96, :128]


def test_folder_is_read_in_name_order_and_stack_equals_folder(tmp_path, bulk_water):
    for i, frame in enumerate(bulk_water):  # written in reverse creation order: the file name decides
        tifffile.imwrite(tmp_path / f"t{5 - i:03d}.tif", frame)
    frames = load_frames(tmp_path, frame_num=5)
    assert frames.dtype == np.float32 and frames.shape == (6, 96, 128)
    np.testing.assert_array_equal(frames, bulk_water[::-1].astype(np.float32))
    tifffile.imwrite(tmp_path.parent / "stack.tif", bulk_water)
    np.testing.assert_array_equal(load_frames(tmp_path.parent / "stack.tif", 5), bulk_water.astype(np.float32))


def test_fewer_frames_than_frame_num_is_refused(tmp_path, bulk_water):
    for i in range(3):
        tifffile.imwrite(tmp_path / f"f{i}.tif", bulk_water[i])
    with pytest.raises(InputError, match=r"3 frames, fewer than frame_num = 5.*lower frame_num"):
        load_frames(tmp_path, frame_num=5)


def test_mixed_frame_sizes_and_empty_folder_are_refused(tmp_path, bulk_water):
    with pytest.raises(InputError, match="no frame files"):
        load_frames(tmp_path, 1)
    tifffile.imwrite(tmp_path / "a.tif", bulk_water[0])
    tifffile.imwrite(tmp_path / "b.tif", bulk_water[1, :64])
    with pytest.raises(InputError, match="same size"):
        load_frames(tmp_path, 1)


def test_windows_are_mirrored_at_both_ends_like_the_seed():
    assert window_indices(0, 10, 5) == [2, 1, 0, 1, 2]
    assert window_indices(1, 10, 5) == [3, 2, 1, 2, 3]
    assert window_indices(4, 10, 5) == [2, 3, 4, 5, 6]
    assert window_indices(9, 10, 5) == [7, 8, 9, 8, 7]
    assert window_indices(8, 10, 5) == [6, 7, 8, 7, 6]
    assert window_indices(3, 7, 1) == [3]


def test_zscore_uses_the_unbiased_std_per_frame(bulk_water):
    z = zscore_frames(bulk_water[:2].astype(np.float32))
    for k in range(2):
        f = bulk_water[k].astype(np.float64)
        np.testing.assert_allclose(z[k], (f - f.mean()) / f.std(ddof=1), atol=1e-4)
        assert abs(z[k].std(ddof=1) - 1.0) < 1e-5


def test_nearest_resize_keeps_the_shorter_side_and_values(bulk_water):
    r = resize_nearest(bulk_water[:2], 48)
    assert r.shape == (2, 48, 64)
    assert set(np.unique(r)) <= set(np.unique(bulk_water[:2]))
    np.testing.assert_array_equal(r[:, ::1, ::1][:, 0, 0], bulk_water[:2, 0, 0])


def test_sampler_gives_zscored_windows_with_added_noise_and_noisy_centre_target(bulk_water):
    frames = bulk_water.astype(np.float32)
    sampler = FrameSampler(frames, 3, FrameAugment(32, resize=(64, 96)), seed=1)
    x, y = sampler.next_batch(4)
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 1, 32, 32)
    np.testing.assert_array_equal(y[:, 0], x[:, 1])  # the target is the (noise-added) centre frame
    np.testing.assert_allclose(x.mean(axis=(2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(2, 3), ddof=1), 1, atol=1e-4)
    # Added noise: neighbouring pixels of a z-scored real frame correlate strongly; noise lowers that.
    clean = FrameSampler(frames, 3, FrameAugment(32, resize=None, add_noise=False), seed=1).next_batch(64)[0]
    noisy = FrameSampler(frames, 3, FrameAugment(32, resize=None), seed=1).next_batch(64)[0]

    def lag1(a):
        return float(np.mean(a[..., 1:] * a[..., :-1]))

    assert lag1(noisy) < lag1(clean) - 0.1
    # Same seed, same batches; the state restores the stream exactly.
    s1 = FrameSampler(frames, 3, FrameAugment(32, resize=(64, 96)), seed=7)
    s1.next_batch(2)
    state = s1.state_dict()
    a = s1.next_batch(2)[0]
    s1.load_state_dict(state)
    np.testing.assert_array_equal(a, s1.next_batch(2)[0])


def test_validation_uses_five_fixed_crops_per_held_out_frame(bulk_water):
    items = validation_items(bulk_water.astype(np.float32), 3, [4, 5], 64)
    assert len(items) == 10 and items[0][0].shape == (3, 64, 64)
    np.testing.assert_array_equal(items[5][1][0], items[5][0][1])


def test_config_refusals_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data_path"):
        load_blindspot_config({"model": "3x3_blind"})
    with pytest.raises(ConfigError, match="unknown key 'frames'"):
        load_blindspot_config({"data_path": "x", "frames": 5})
    with pytest.raises(ConfigError, match="img_size 100 must be a multiple of 8"):
        load_blindspot_config({"data_path": "x", "img_size": 100})
    with pytest.raises(ConfigError, match="loss_function"):
        load_blindspot_config({"data_path": "x", "loss_function": "L3"})
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: 5x5_blind\nframe_num: 3\nlr: 0.001\nepochs: 4\ndata_path: frames\n")
    cfg = load_blindspot_config(cfg_file)
    assert (cfg.model, cfg.frame_num, cfg.learning_rate, cfg.max_epochs) == ("5x5_blind", 3, 0.001, 4)
    assert cfg.data_path == str(tmp_path / "frames")
