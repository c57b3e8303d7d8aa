"""Property tests for input normalization on lazily read volumes.

``fit_normalization`` must give the same map for a volume read plane by plane (a bare lazy wrapper, an
h5py dataset, a TIFF behind ``TiffSlabReader``/``SlabVolume``) as for the same values in memory, for every
normalization kind, below and above the subsample budget (``normalize.MAX_SAMPLES``, patched low so the
arrays stay small). A lazy volume is never converted whole: ``np.asarray`` of a slab reader crashed
``scopert apply`` on small TIFFs. Inputs are crops of a real EM volume (ISBI 2012).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scopert.card import Normalization
from scopert.runtime import normalize
from scopert.runtime.apply import SlabVolume
from scopert.runtime.io.tiff import TiffSlabReader
from scopert.runtime.normalize import fit_normalization, subsample

LAZY_EXAMPLES = 100  # per (source, budget) pair
SPREAD_EXAMPLES = 300


def prop(max_examples: int):
    """Derandomized settings: the same examples on every run, no per-example deadline."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def em_volume(data_dir) -> np.ndarray:
    return tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif")  # (30, 512, 512) uint8


class LazyVolume:
    """Only ``shape``, ``dtype``, ``ndim`` and ``__getitem__``, like a slab reader; refuses to be read whole
    and records the largest single read."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim
        self.largest_read = 0

    def __getitem__(self, key):
        out = np.array(self._array[key])
        self.largest_read = max(self.largest_read, out.size)
        return out

    def __array__(self, *args, **kwargs):
        raise AssertionError("a lazy volume was converted whole (np.asarray); read it plane by plane")


# ---- strategies ----------------------------------------------------------------------------------------


@st.composite
def normalizations(draw) -> tuple[Normalization, float | None, float | None]:
    """A card normalization of any kind, and optional --p_min/--p_max overrides."""
    kind = draw(st.sampled_from(["percentile", "zscore", "minmax", "fixed", "none"]))
    spec = Normalization(kind=kind, clip=draw(st.booleans()), symmetric=draw(st.booleans()))
    pmin = pmax = None
    if kind == "percentile":
        spec.pmin = draw(st.floats(0, 49.9))
        spec.pmax = draw(st.floats(50, 100))
        if draw(st.booleans()):
            pmin, pmax = draw(st.floats(0, 20)), draw(st.floats(80, 100))
    if kind == "fixed":
        spec.offset = draw(st.floats(-100, 100))
        spec.scale = draw(st.floats(0.5, 300))
    return spec, pmin, pmax


@st.composite
def crops(draw, em: np.ndarray, ndim: int | None = None) -> np.ndarray:
    """A crop of the real volume, 2D to 4D, in one of the dtypes microscopes write."""
    ndim = ndim or draw(st.integers(2, 4))
    if ndim == 4:  # (t, z, y, x): frames are consecutive slabs of the volume
        t, z = draw(st.integers(1, 3)), draw(st.integers(1, 5))
        y, x = draw(st.integers(1, 24)), draw(st.integers(1, 24))
        z0, y0, x0 = draw(st.integers(0, 30 - t * z)), draw(st.integers(0, 512 - y)), draw(st.integers(0, 512 - x))
        crop = em[z0:z0 + t * z, y0:y0 + y, x0:x0 + x].reshape(t, z, y, x)
    else:
        shape = [draw(st.integers(1, 8 if ndim == 3 else 40))] + [draw(st.integers(1, 40)) for _ in range(ndim - 1)]
        if ndim == 2:
            z = draw(st.integers(0, 29))
            y0, x0 = draw(st.integers(0, 512 - shape[0])), draw(st.integers(0, 512 - shape[1]))
            crop = em[z, y0:y0 + shape[0], x0:x0 + shape[1]]
        else:
            starts = [draw(st.integers(0, n - s)) for n, s in zip(em.shape, shape)]
            crop = em[tuple(slice(a, a + s) for a, s in zip(starts, shape))]
    dtype = draw(st.sampled_from(["uint8", "uint16", "int16", "float32"]))
    if dtype == "uint16":
        return crop.astype(np.uint16) * 257
    if dtype == "int16":
        return crop.astype(np.int16) - 100
    if dtype == "float32":
        return crop.astype(np.float32) / 255.0
    return np.ascontiguousarray(crop)


def _budget(data, array: np.ndarray, regime: str) -> int:
    total = array.size
    if regime == "below":
        return data.draw(st.integers(total, 2 * total), label="MAX_SAMPLES")
    return data.draw(st.integers(1, max(1, total - 1)), label="MAX_SAMPLES")


def _assert_same_map(lazy, array: np.ndarray, spec, pmin, pmax) -> None:
    got = fit_normalization(lazy, spec, pmin, pmax)
    want = fit_normalization(array, spec, pmin, pmax)
    assert got == want
    assert np.isfinite([got.offset, got.scale]).all() and got.scale != 0
    plane = array[0] if array.ndim > 1 else array
    np.testing.assert_array_equal(got(plane), want(plane))


# ---- lazy == in memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("regime", ["below", "above"])
def test_lazy_wrapper_fits_like_numpy(regime, em_volume):
    @prop(LAZY_EXAMPLES)
    @given(st.data(), normalizations())
    def check(data, norm):
        array = data.draw(crops(em_volume), label="array")
        spec, pmin, pmax = norm
        assume(regime == "below" or array.size >= 2)  # a one-voxel array cannot exceed a budget of 1
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(normalize, "MAX_SAMPLES", _budget(data, array, regime))
            lazy = LazyVolume(array)
            _assert_same_map(lazy, array, spec, pmin, pmax)
        # plane by plane: never more than one plane (one index of the first axis) in a single read
        assert lazy.largest_read <= array[0].size

    check()


@pytest.mark.parametrize("regime", ["below", "above"])
def test_h5py_dataset_fits_like_numpy(regime, em_volume):
    with tempfile.TemporaryDirectory() as folder:
        @prop(LAZY_EXAMPLES)
        @given(st.data(), normalizations(), st.booleans())
        def check(data, norm, chunked):
            array = data.draw(crops(em_volume), label="array")
            assume(regime == "below" or array.size >= 2)  # a one-voxel array cannot exceed a budget of 1
            spec, pmin, pmax = norm
            path = Path(folder) / "volume.h5"
            with h5py.File(path, "w") as fh:
                fh.create_dataset("raw", data=array, chunks=True if chunked else None)
            with h5py.File(path, "r") as fh, pytest.MonkeyPatch.context() as mp:
                mp.setattr(normalize, "MAX_SAMPLES", _budget(data, array, regime))
                _assert_same_map(fh["raw"], array, spec, pmin, pmax)

        check()


@pytest.mark.parametrize("regime", ["below", "above"])
def test_tiff_slab_volume_fits_like_numpy(regime, em_volume):
    """The streamed ``scopert apply`` path: a TIFF behind TiffSlabReader, seen as a SlabVolume."""
    with tempfile.TemporaryDirectory() as folder:
        @prop(LAZY_EXAMPLES)
        @given(st.data(), normalizations(), st.sampled_from([None, "zlib"]))
        def check(data, norm, compression):
            array = data.draw(crops(em_volume, ndim=data.draw(st.integers(2, 3), label="ndim")), label="array")
            assume(regime == "below" or array.size >= 2)  # a one-voxel array cannot exceed a budget of 1
            spec, pmin, pmax = norm
            path = Path(folder) / "volume.tif"
            tifffile.imwrite(path, array, compression=compression, photometric="minisblack")
            with TiffSlabReader(path) as reader, pytest.MonkeyPatch.context() as mp:
                volume = SlabVolume(reader)
                assert volume.shape == array.shape
                mp.setattr(normalize, "MAX_SAMPLES", _budget(data, array, regime))
                _assert_same_map(volume, array, spec, pmin, pmax)

        check()


# ---- the subsample itself ------------------------------------------------------------------------------


@prop(SPREAD_EXAMPLES)
@given(st.integers(2, 60), st.integers(1, 64), st.data())
def test_subsample_spreads_over_planes_within_budget(n_planes, plane_size, data):
    """Plane ``i`` holds the value ``i``: the subsample's quantiles must match the volume's (its planes are
    spread over the whole first axis) and its size must stay under twice the budget."""
    volume = np.repeat(np.arange(n_planes, dtype=np.float64)[:, None], plane_size, axis=1)
    # budgets of at least 16 voxels: one voxel from each of the (at least 16) planes read fits in them
    budget = data.draw(st.integers(16, max(32, volume.size)))
    for source in (volume, LazyVolume(volume)):
        sample = subsample(source, budget)
        assert sample.size < 2 * budget or sample.size == volume.size <= budget
        for q in (10, 50, 90):
            assert abs(np.percentile(sample, q) - np.percentile(volume, q)) <= n_planes / 8 + 1


def test_subsample_of_large_planes_reads_more_than_the_first(monkeypatch):
    """Regression: when every plane held more voxels than the budget, only plane 0 was sampled, so a
    volume's percentiles came from its first plane (a 100 x 2048 x 2048 stack at the default budget)."""
    volume = np.repeat(np.arange(10, dtype=np.float32)[:, None], 64, axis=1)  # plane i holds i
    assert np.unique(subsample(volume, 50)).tolist() == list(range(10))
    monkeypatch.setattr(normalize, "MAX_SAMPLES", 50)
    norm = fit_normalization(volume, Normalization(kind="percentile", pmin=0.0, pmax=100.0, eps=0.0))
    assert norm.offset == 0.0
    assert norm.scale >= 8.0  # the top planes are in the sample (plane 0 alone gave 0)


def test_max_samples_is_read_at_call_time(monkeypatch):
    """Regression: the budget was bound as a default argument, so patching ``MAX_SAMPLES`` had no effect."""
    volume = np.arange(4000, dtype=np.float32).reshape(40, 100)
    monkeypatch.setattr(normalize, "MAX_SAMPLES", 400)
    assert subsample(volume).size < 800
    monkeypatch.setattr(normalize, "MAX_SAMPLES", 10_000)
    assert subsample(volume).size == 4000
