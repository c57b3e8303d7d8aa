"""A LocalCluster (2 worker processes x 1 thread) gives the single-machine output: 2D, 3D, 2D+t, a 2D model
over a z-stack, an upsampling model, 16-bit output. Crop stitching: max abs difference <= 1e-6."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from scopert.scaleout.ledger import Ledger
from tests.scaleout.helpers import distributed_run, read_zarr, single

CASES = {
    # model, input fixture, --block, ApplyOptions
    "2d": ("m2d.onnx", "w2s_image", (56, 56), {"tile": (32, 32)}),
    "2d_upsampling": ("m2d_up.onnx", "w2s_image", (40, 60), {"tile": (24, 24)}),
    "2d_over_z_stack": ("m2d.onnx", "em_volume", (5, 56, 56), {"tile": (32, 32), "bits": 16}),
    "3d_two_channels": ("m3d.onnx", "em_volume", (4, 40, 40), {"tile": (8, 24, 24)}),
    "2d_plus_t": ("m2dt.onnx", "movie", (8, 40, 40), {"tile": (8, 24, 24)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cluster_output_equals_single_machine(case, dist_models, request, client, tmp_path):
    model, image_fixture, block, opts = CASES[case]
    image = request.getfixturevalue(image_fixture)
    expect = single(dist_models / model, image, tmp_path / "single.zarr", **opts)
    result = distributed_run(dist_models / model, image, tmp_path / "dist.zarr", client, block, **opts)
    got = read_zarr(tmp_path / "dist.zarr")
    assert got.shape == expect.shape and got.dtype == expect.dtype
    assert result.n_blocks >= 4 and result.ran == result.n_blocks
    assert len(result.stats.workers) == 2, "both workers took blocks"
    diff = np.abs(got.astype(np.float64) - expect.astype(np.float64)).max()
    assert diff <= (1 if expect.dtype == np.uint16 else 1e-6), diff  # 16-bit: one step where f32 rounding differs
    assert np.abs(expect.astype(np.float64)).max() > 0.1, "a blank output would prove nothing"
    # the same OME-Zarr layout as the single-machine writer, and a ledger that lists every block
    single_attrs = zarr.open_group(str(tmp_path / "single.zarr"), mode="r").attrs.asdict()
    dist_attrs = zarr.open_group(str(tmp_path / "dist.zarr"), mode="r").attrs.asdict()
    assert dist_attrs["multiscales"][0]["axes"] == single_attrs["multiscales"][0]["axes"]
    assert dist_attrs["multiscales"][0]["datasets"] == single_attrs["multiscales"][0]["datasets"]
    assert len(Ledger.of(tmp_path / "dist.zarr").done()) == result.n_blocks
    assert not list(tmp_path.glob(".dist.zarr*")), "the hidden store was renamed to the final name"


def test_model_is_loaded_once_per_worker_not_per_block(em_volume, client, tmp_path):
    from tests.scaleout.conftest import PERCENTILE
    from tests.runtime.graphs import conv_stack

    conv_stack(tmp_path / "fresh.onnx", ndim=3, layers=2, seed=7, normalization=PERCENTILE)  # a new sha256

    def loads(dask_worker):
        plugin = dask_worker.plugins.get("scopert-worker-cache")
        return 0 if plugin is None else plugin.loads

    before = client.run(loads)
    result = distributed_run(tmp_path / "fresh.onnx", em_volume, tmp_path / "o.zarr", client, (4, 24, 24),
                             tile=(8, 16, 16))
    after = client.run(loads)
    added = [after[w] - before.get(w, 0) for w in after]
    assert result.n_blocks >= 24
    assert sorted(added) == [1, 1], f"each worker loads the model once for {result.n_blocks} blocks: {added}"


def test_the_cluster_output_keeps_the_physical_sizes(dist_models, client, data_dir, tmp_path):
    """Issue 20: every writer carries the voxel size; the Dask store is one of them."""
    import tifffile

    src = tmp_path / "cryo.tif"
    vol = tifffile.imread(data_dir / "em_misc" / "cylindra_13pf_MT.tif")[:8, :64, :64]
    tifffile.imwrite(src, vol, imagej=True, resolution=(1 / 1.052, 1 / 1.052),
                     metadata={"axes": "ZYX", "unit": "nm", "spacing": 2.0})
    single(dist_models / "m3d.onnx", src, tmp_path / "single.zarr", tile=(8, 24, 24))
    distributed_run(dist_models / "m3d.onnx", src, tmp_path / "dist.zarr", client, (4, 40, 40), tile=(8, 24, 24))
    ms = [zarr.open_group(str(tmp_path / f"{k}.zarr"), mode="r").attrs.asdict()["multiscales"][0]
          for k in ("single", "dist")]
    assert ms[0]["axes"] == ms[1]["axes"] and ms[0]["datasets"] == ms[1]["datasets"]
    units = {a["name"]: a.get("unit") for a in ms[1]["axes"]}
    scale = dict(zip((a["name"] for a in ms[1]["axes"]), ms[1]["datasets"][0]["coordinateTransformations"][0]["scale"]))
    assert units["z"] == units["x"] == "nanometer" and scale["z"] == pytest.approx(2.0)
    assert scale["x"] == pytest.approx(1.052, rel=1e-6)
