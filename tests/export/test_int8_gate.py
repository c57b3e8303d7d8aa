"""INT8 via NNCF (issue 16): quantized on real tiles, gated against f32, recorded in the card, and then
allowed by ``--precision int8``; the Dice rule for segmentation outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tifffile

from scopert.card import ModelCard, TensorSpec
from scopert.export.int8 import dice_change, quantize_int8
from scopert.runtime import load
from tests.runtime.graphs import conv_stack


def test_dice_change_numbers():
    a = np.zeros((10, 10)); a[:5] = 1  # 50 voxels
    b = np.zeros((10, 10)); b[:4] = 1  # 40 voxels, all inside a
    assert dice_change(a, b, 0.5) == pytest.approx(1 - 2 * 40 / 90)
    assert dice_change(a, a, 0.5) == 0.0 and dice_change(a * 0, a * 0, 0.5) == 0.0


def test_int8_quantized_gated_recorded_and_loaded(tmp_path, data_dir):
    pytest.importorskip("nncf")
    path = tmp_path / "c.onnx"
    conv_stack(path, ndim=2, layers=3, channels=8)
    proto = onnx.load(str(path))
    card = ModelCard.from_json(next(p.value for p in proto.metadata_props if p.key == "scopert.card"))
    img = tifffile.imread(data_dir / "stardist_nuclei_2d" / "stardist_dsb2018_img2d.tif").astype(np.float32)
    lo, hi = np.percentile(img, [1, 99.8])
    tiles = np.stack([((img[y:y + 64, x:x + 64] - lo) / (hi - lo))[None] for y, x in
                      [(0, 0), (128, 64), (256, 256), (384, 320)]]).astype(np.float32)
    res = quantize_int8(path, tiles, card)
    gate = res.gate
    assert res.path.is_file() and res.path.with_suffix(".bin").is_file()
    assert gate["metric"] == "psnr_db" and gate["calibration_tiles"] == 2 and gate["tiles"] == 4
    assert 25 < gate["value"] < 120 and gate["passed"] == (gate["value"] >= 40)
    card.precision["int8_gate"] = dict(gate, passed=True)
    card.embed(proto)
    onnx.save(proto, str(path))
    model = load(path, backend="openvino", precision="int8")
    assert model.backend.info.precision == "int8" and res.path.name in model.backend.info.reason
    f32 = load(path, backend="openvino", precision="f32")
    x = tiles[:1]
    from scopert.runtime.compare import psnr_db

    assert psnr_db(f32.backend.run(x), model.backend.run(x)) == pytest.approx(gate["value"], abs=15)


@pytest.mark.parametrize("model_config, segmentation", [
    ({"name": "UNet2D", "in_channels": 1, "out_channels": 1, "f_maps": 16, "final_sigmoid": True}, True),
    ({"name": "UNet3D", "in_channels": 1, "out_channels": 2, "f_maps": 16, "final_sigmoid": False}, True),
    ({"name": "UNet3D", "in_channels": 1, "out_channels": 1, "f_maps": 16, "is_segmentation": False}, False),
])
def test_unet_cards_say_segmentation_so_gates_judge_by_dice(model_config, segmentation):
    """A pytorch-3dunet segmentation export ends in its activation: the INT8 and bf16 gates use the Dice rule (the
    ISBI U-Net was judged by PSNR before, because only training_config['model'] said so)."""
    from scopert.training.unet.model import card_fields

    fields = card_fields(model_config)
    card = ModelCard(family="unet", name="u", input=TensorSpec(**fields["input"]),
                     output=TensorSpec(**fields["output"]), postprocess=fields["postprocess"])
    assert card.mask_threshold() == (0.5 if segmentation else None)
    if segmentation:
        assert fields["postprocess"]["activation"] == ("sigmoid" if model_config["final_sigmoid"] else "softmax")
    older = ModelCard(family="unet", name="u", input=card.input, output=card.output,
                      training_config={"model": {"is_segmentation": segmentation}})
    assert (older.mask_threshold() is not None) == segmentation
