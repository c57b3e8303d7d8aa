"""A graph built for one input shape (bioimage.io's fixed-shape packages, 1x1x512x512): tiles of exactly that shape
with the halo inside, batch as fixed, an image of exactly that size run whole, on ONNX Runtime and OpenVINO."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from scopert.errors import ConfigError
from scopert.runtime import load
from tests.runtime.graphs import conv_stack

FIXED = (1, 1, 64, 64)


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("fixed") / "fixed.onnx"
    conv_stack(path, ndim=2, layers=3, fixed_shape=FIXED)
    return path


def _whole(path, image):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"input": image[None, None].astype(np.float32)})[0][0, 0]


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_an_image_of_the_fixed_size_runs_whole_and_larger_ones_in_fixed_tiles(fixed_model, backend, data_dir):
    if backend == "openvino":
        pytest.importorskip("openvino")
    import tifffile

    image = tifffile.imread(data_dir / "stardist_nuclei_2d/stardist_dsb2018_img2d.tif").astype(np.float32)
    image /= image.max()
    with load(fixed_model, backend=backend, device="cpu") as model:
        exact = image[:64, :64]
        np.testing.assert_allclose(model.predict(exact), _whole(fixed_model, exact), atol=1e-5)  # no padding at all
        big = image[:101, :90]  # ONNX Runtime refused every call of the 1024-wide default tile
        out = model.predict(big)
        assert out.shape == big.shape and np.isfinite(out).all()
        rp = model.plan_for(big[None], "yx")
        assert rp.plan.tile_shape == (64, 64) and rp.batch == 1
        small = image[:40, :50]  # smaller than the graph's shape: one centred window of exactly 64x64
        assert model.predict(small).shape == small.shape
        stack = np.stack([exact, exact[::-1]])  # planes of a stack share no batch: the graph takes one
        np.testing.assert_allclose(model.predict(stack, axes="zyx")[1], _whole(fixed_model, exact[::-1]), atol=1e-5)


def test_a_tile_or_batch_the_graph_cannot_take_is_refused(fixed_model):
    with load(fixed_model, backend="ort", device="cpu") as model:
        with pytest.raises(ConfigError, match=r"takes exactly 64 there \(a fixed input shape\)"):
            model.predict(np.zeros((100, 100), np.float32), tile=(128, 128))
        with pytest.raises(ConfigError, match="takes exactly 1 tile"):
            model.predict(np.zeros((100, 100), np.float32), batch=2)
