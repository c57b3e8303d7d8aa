"""OME-Zarr outputs carry a pyramid (y and x halved per level down to one viewer tile) in NGFF 0.4 or 0.5, read
back by ome-zarr-py's Reader (an independent reader) with the right scales; apply and the Dask path write it."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from scopert.errors import ConfigError
from scopert.runtime.io import read_image
from scopert.runtime.io.omezarr import PYRAMID_STOP, OmeZarrWriter, pyramid_shapes

ome_zarr_reader = pytest.importorskip("ome_zarr.reader")
from ome_zarr.io import parse_url  # noqa: E402

from tests.conftest import DATA  # noqa: E402

ISBI = DATA / "isbi2012_em" / "isbi2012_train_volume.tif"


def _reader_levels(path):
    node = next(iter(ome_zarr_reader.Reader(parse_url(str(path)))()))
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    return [np.asarray(d) for d in node.data], scales, "".join(a["name"] for a in node.metadata["axes"])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 4))
def test_pyramid_shapes_halve_y_and_x_down_to_one_viewer_tile(h, w, z):
    shapes = pyramid_shapes((z, h, w), "zyx")
    assert shapes[0] == (z, h, w)
    assert max(shapes[-1][1:]) <= PYRAMID_STOP  # the coarsest level fits a tile
    assert len(shapes) == 1 or max(shapes[-2][1:]) > PYRAMID_STOP  # and no level more than needed
    for finer, coarser in zip(shapes, shapes[1:]):
        assert coarser == (z, -(-finer[1] // 2), -(-finer[2] // 2))


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_a_real_em_stack_gets_a_pyramid_that_ome_zarr_reads(tmp_path, ngff):
    em = tifffile.imread(ISBI)[:3]  # 3 x 512 x 512, uint8
    out = tmp_path / "em.zarr"
    with OmeZarrWriter(out, em.shape, em.dtype, "zyx", ngff=ngff, scale={"z": 2.0}) as w:
        w.write((slice(None),) * 3, em)
    levels, scales, axes = _reader_levels(out)
    assert axes == "zyx" and [lv.shape for lv in levels] == [(3, 512, 512), (3, 256, 256)]
    assert scales == [[2.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    np.testing.assert_array_equal(levels[0], em)
    mean2x2 = em.astype(np.float32).reshape(3, 256, 2, 256, 2).mean((2, 4))
    assert np.abs(levels[1].astype(np.float32) - mean2x2).max() <= 0.5  # rounded to uint8
    assert ((out / "zarr.json").exists()) == (ngff == "0.5") and ((out / ".zattrs").exists()) == (ngff == "0.4")
    with read_image(out) as image:  # ScopeRT's own reader takes level 0
        assert image.axes == "zyx" and image.array.shape == em.shape


def test_apply_writes_ngff_05_with_a_pyramid_and_refuses_ngff_for_tiff(tmp_path):
    from click.testing import CliRunner

    from scopert.cli import cli
    from tests.runtime.graphs import conv_stack

    model = tmp_path / "m.onnx"
    conv_stack(model, ndim=2)
    src = tmp_path / "em.tif"
    tifffile.imwrite(src, tifffile.imread(ISBI)[:2], imagej=True,
                     metadata={"axes": "TYX"})
    runner = CliRunner()
    res = runner.invoke(cli, ["apply", "-m", str(model), "-i", str(src), "-o", str(tmp_path / "o.zarr"),
                              "--ngff", "0.5", "--backend", "ort", "--precision", "f32"])
    assert res.exit_code == 0, res.output
    levels, scales, axes = _reader_levels(tmp_path / "o.zarr")
    assert axes == "tyx" and [lv.shape for lv in levels] == [(2, 512, 512), (2, 256, 256)]
    res = runner.invoke(cli, ["apply", "-m", str(model), "-i", str(src), "-o", str(tmp_path / "o.tif"),
                              "--ngff", "0.5", "--backend", "ort", "--precision", "f32"])
    assert isinstance(res.exception, ConfigError) and "--ngff 0.5 applies to OME-Zarr outputs" in str(res.exception)
    assert "model " not in res.output  # refused before the model loads
    assert not (tmp_path / "o.tif").exists()
    with pytest.raises(ConfigError, match="--ngff 0.3: use 0.4"):
        OmeZarrWriter(tmp_path / "x.zarr", (4, 4), np.uint8, "yx", ngff="0.3")
