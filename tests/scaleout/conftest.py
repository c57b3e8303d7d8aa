"""Fixtures for the distributed tests: small tile-invariant models, real images, and one shared LocalCluster.

The machine has two cores: one cluster of 2 worker processes x 1 thread serves every test that does not need
a cluster of its own (starting one costs seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from scopert.card import Normalization
from tests.runtime.graphs import conv_stack

PERCENTILE = Normalization(kind="percentile", pmin=1.0, pmax=99.8)


@pytest.fixture(scope="session")
def dist_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_models")
    conv_stack(root / "m2d.onnx", ndim=2, layers=2, divisor=4, normalization=PERCENTILE)
    conv_stack(root / "m2d_up.onnx", ndim=2, layers=2, upsample=2, normalization=PERCENTILE)
    conv_stack(root / "m3d.onnx", ndim=3, layers=2, cout=2, normalization=PERCENTILE)
    conv_stack(root / "m2dt.onnx", ndim=3, layers=2, axes="bctyx", time_window=6, normalization=PERCENTILE)
    conv_stack(root / "m3d_variant.onnx", ndim=3, layers=2, global_mean=True, normalization=PERCENTILE)
    return root


@pytest.fixture(scope="session")
def em_volume(tmp_path_factory, data_dir):
    """Real ssTEM planes (ISBI 2012), 12 x 96 x 112: a z-stack for 3D models and for 2D models plane by plane."""
    path = tmp_path_factory.mktemp("dist_img") / "em.tif"
    stack = tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif")
    tifffile.imwrite(path, stack[:12, 100:196, 50:162], photometric="minisblack")
    return path


@pytest.fixture(scope="session")
def w2s_image(tmp_path_factory, data_dir):
    path = tmp_path_factory.mktemp("dist_img") / "w2s.tif"
    tifffile.imwrite(path, tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")[0, :150, :130])
    return path


@pytest.fixture(scope="session")
def movie(tmp_path_factory, data_dir):
    """Real brightfield video (trackpy bulk water), 16 frames of 64 x 80: a 2D+t movie (t, y, x)."""
    path = tmp_path_factory.mktemp("dist_img") / "movie.tif"
    frames = tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")[:16, 100:164, 200:280]
    tifffile.imwrite(path, np.ascontiguousarray(frames), imagej=True, metadata={"axes": "TYX"})
    return path


@pytest.fixture(scope="session")
def client():
    import distributed
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()
