"""CNNT HDF5 data: the seed's layout and scaling, patch sampling, and the errors for bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile

from scopert.errors import InputError
from scopert.training.cnnt.data import MoviePatchSampler, Scaling, load_h5_movies, symmetric_pad_to


def _real(data_dir, t=6, h=40, w=56):
    stack = tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")
    return stack[:t, 100 : 100 + h, 200 : 200 + w].astype(np.uint16) * 256  # 16-bit counts, as the seed expects


def _h5(path, movies: dict[str, dict[str, np.ndarray]]):
    with h5py.File(path, "w") as fh:
        for key, dsets in movies.items():
            for name, arr in dsets.items():
                fh.create_dataset(f"{key}/{name}", data=arr)
    return path


def test_seed_layout_and_fixed_scaling(tmp_path, data_dir):
    clean = _real(data_dir)
    noisy = clean // 2
    path = _h5(tmp_path / "d.h5", {"b": {"noisy_im": noisy, "clean_im": clean}, "a": {"noisy_im": noisy[0],
                                                                                       "clean_im": clean[0]}})
    movies = load_h5_movies([path], Scaling())
    assert [m.source for m in movies] == ["d.h5:a", "d.h5:b"]
    assert movies[0].noisy.shape == (1, 40, 56) and movies[1].clean.shape == (6, 40, 56)
    np.testing.assert_allclose(movies[1].clean, clean / 65536.0, rtol=1e-6)
    clipped = Scaling(im_value_scale=(0.0, 40000.0)).apply(clean)
    assert 0.0 < (clipped == 1.0).mean() < 0.5
    assert clipped.min() == pytest.approx(clean.min() / 40000.0)


def test_per_scaling_maps_percentiles_to_unit_range(data_dir):
    clean = _real(data_dir).astype(np.float32)
    lo, hi = np.percentile(clean, (1.5, 99.5))
    out = Scaling(per_scaling=True).apply(clean)
    np.testing.assert_allclose(out, np.clip((clean - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert (out == 0).mean() == pytest.approx(0.015, abs=0.01) and (out == 1).mean() == pytest.approx(0.005, abs=0.01)


def test_missing_dataset_names_the_key_and_what_it_holds(tmp_path, data_dir):
    clean = _real(data_dir)
    path = _h5(tmp_path / "bad.h5", {"cell3": {"noisy_im": clean, "gt": clean}})
    with pytest.raises(InputError, match=r"bad.h5:cell3 has no 'clean_im' dataset \(it holds \['gt', 'noisy_im'\]\)"):
        load_h5_movies([path], Scaling())
    other = _h5(tmp_path / "shape.h5", {"k": {"noisy_im": clean, "clean_im": clean[:, :20]}})
    with pytest.raises(InputError, match="noisy_im has shape"):
        load_h5_movies([other], Scaling())
    with pytest.raises(InputError, match="does not exist"):
        load_h5_movies([tmp_path / "nope.h5"], Scaling())


def test_short_movies_are_padded_symmetrically():
    noisy = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    n, c = symmetric_pad_to(noisy, noisy + 1, (8, 4, 12))
    assert n.shape == (8, 4, 12)
    np.testing.assert_array_equal(n[3, :, :5], noisy[2])  # mirrored including the edge frame
    np.testing.assert_array_equal(n[:, :, 5], noisy[:, :, 4][[0, 1, 2, 2, 1, 0, 0, 1]])
    np.testing.assert_array_equal(c, n + 1)


def test_sampler_patches_flips_foreground_and_resume(data_dir):
    clean = _real(data_dir).astype(np.float32) / 65536.0
    clean[:, :, :20] = 0.0  # the left columns are background: the foreground check avoids them
    from scopert.training.cnnt.data import Movie

    movie = Movie("m", clean * 2.0, clean)  # noisy = 2 * clean, so pairing survives flips and crops
    sampler = MoviePatchSampler([movie], [(8, 16, 16), (4, 24, 24)], seed=3, area_thres=0.99)
    unchecked = MoviePatchSampler([movie], [(8, 16, 16), (4, 24, 24)], seed=3, area_thres=0.0)
    sizes, fg, fg_unchecked = set(), [], []
    for _ in range(12):
        x, y = sampler.next_batch(3)
        assert x.dtype == np.float32 and x.ndim == 5 and x.shape[2] == 1
        sizes.add(x.shape[1:])
        np.testing.assert_allclose(x, 2.0 * y)
        fg.append((y > 0.002).mean())
        fg_unchecked.append((unchecked.next_batch(3)[1] > 0.002).mean())
    assert np.mean(fg) > 0.97 and np.mean(fg_unchecked) < 0.85
    assert sizes == {(8, 1, 16, 16), (4, 1, 24, 24)}
    state = sampler.state_dict()
    a = sampler.next_batch(2)
    sampler.load_state_dict(state)
    b = sampler.next_batch(2)
    np.testing.assert_array_equal(a[0], b[0])
