"""The client's memory stays flat in the number of blocks (bounded window, futures released, aggregates only)."""

from __future__ import annotations

import numpy as np
import psutil
import tifffile

from tests.scaleout.helpers import distributed_run


def test_client_rss_is_flat_over_hundreds_of_blocks(dist_models, client, tmp_path, data_dir):
    src = tmp_path / "planes.tif"
    stack = tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif")
    tifffile.imwrite(src, np.ascontiguousarray(stack[:4, :160, :160]), photometric="minisblack")
    distributed_run(dist_models / "m2d.onnx", src, tmp_path / "warm.zarr", client, (1, 160, 160), tile=(32, 32))
    proc = psutil.Process()
    before = proc.memory_info().rss
    result = distributed_run(dist_models / "m2d.onnx", src, tmp_path / "many.zarr", client, (1, 16, 16),
                             tile=(20, 20))  # cores of 16: whole tiles per block
    growth_mb = (proc.memory_info().rss - before) / 2**20
    assert result.n_blocks == 4 * 10 * 10
    assert growth_mb < 50, f"client RSS grew {growth_mb:.1f} MB over {result.n_blocks} blocks"
