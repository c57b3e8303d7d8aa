"""The unet family (pytorch-3dunet UNet3D / ResidualUNet3D / UNet2D): layout, parameter counts and behaviour."""

from __future__ import annotations

import pytest
import torch

from scopert.card import ModelCard
from scopert.errors import ConfigError
from scopert.training.unet.model import UNetConfig, build_model, card_fields, export_module, export_shapes
from scopert.training.common.registry import get_family

SEGMENTATION_NET = dict(name="UNet3D", in_channels=1, out_channels=2, f_maps=64, num_groups=16,
                        layer_order="gcr", final_sigmoid=False, is_segmentation=True)
SMALL = dict(name="UNet3D", in_channels=1, out_channels=3, f_maps=8, num_levels=3, num_groups=4,
             final_sigmoid=False)


def test_segmentation_net_has_the_seed_parameter_count_and_keys():
    model = build_model(SEGMENTATION_NET)
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 16_318_756
    assert len(state) == 44
    assert tuple(state["encoders.0.basic_module.SingleConv1.groupnorm.weight"].shape) == (1,)
    assert tuple(state["encoders.0.basic_module.SingleConv1.conv.weight"].shape) == (32, 1, 3, 3, 3)
    assert tuple(state["encoders.3.basic_module.SingleConv2.conv.weight"].shape) == (512, 256, 3, 3, 3)
    assert tuple(state["decoders.0.basic_module.SingleConv1.conv.weight"].shape) == (256, 768, 3, 3, 3)
    assert tuple(state["final_conv.weight"].shape) == (2, 64, 1, 1, 1)
    assert tuple(state["final_conv.bias"].shape) == (2,)
    # GroupNorm before the conv in 'gcr': no conv bias anywhere but the final 1x1 conv
    assert [k for k in state if k.endswith("conv.bias")] == ["final_conv.bias"]
    # first GroupNorm has 1 channel < 16 groups -> one group over the whole patch
    assert model.encoders[0].basic_module.SingleConv1.groupnorm.num_groups == 1
    assert model.encoders[1].basic_module.SingleConv1.groupnorm.num_groups == 16


def test_layer_order_controls_norm_position_and_bias():
    cbr = build_model(dict(SMALL, layer_order="cbr")).state_dict()
    assert "encoders.0.basic_module.SingleConv1.batchnorm.running_mean" in cbr
    # BatchNorm after the conv normalizes the conv's output channels
    assert tuple(cbr["encoders.0.basic_module.SingleConv1.batchnorm.weight"].shape) == (4,)
    assert "encoders.0.basic_module.SingleConv1.conv.bias" not in cbr
    cr = build_model(dict(SMALL, layer_order="cr")).state_dict()
    assert tuple(cr["encoders.0.basic_module.SingleConv1.conv.bias"].shape) == (4,)
    # encoder conv1 widens to max(out // 2, in); decoder conv1 takes skip + upsampled channels
    assert tuple(cr["encoders.1.basic_module.SingleConv1.conv.weight"].shape) == (8, 8, 3, 3, 3)
    assert tuple(cr["decoders.1.basic_module.SingleConv1.conv.weight"].shape) == (8, 24, 3, 3, 3)


def test_groupnorm_that_does_not_divide_is_a_config_error():
    with pytest.raises(ConfigError, match="num_groups"):
        build_model(dict(SMALL, f_maps=12, num_groups=8))
    with pytest.raises(ConfigError, match="layer_order"):
        build_model(dict(SMALL, layer_order="rgc"))
    with pytest.raises(ConfigError, match="UNet3D"):
        build_model(dict(SMALL, name="UNet4D"))


def test_residual_unet_layout_and_summation_joining():
    cfg = dict(name="ResidualUNet3D", in_channels=2, out_channels=1, f_maps=4, num_groups=2)
    model = build_model(cfg)
    state = model.state_dict()
    assert UNetConfig.from_dict(cfg).levels == 5
    assert tuple(state["decoders.0.upsampling.upsample.weight"].shape) == (64, 32, 3, 3, 3)
    assert tuple(state["decoders.0.basic_module.conv1.conv.weight"].shape) == (32, 32, 3, 3, 3)
    assert tuple(state["encoders.0.basic_module.conv3.groupnorm.weight"].shape) == (4,)
    x = torch.randn(1, 2, 16, 32, 16)
    with torch.no_grad():
        assert model(x).shape == (1, 1, 16, 32, 16)


def test_first_groupnorm_makes_the_net_blind_to_input_gain_and_offset():
    """GroupNorm(1) on the input normalizes the whole patch: the reason the card says tile_invariant False."""
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    x = torch.rand(1, 1, 8, 16, 16)
    with torch.no_grad():
        a, b = model(x), model(3.0 * x + 5.0)
        c = model(torch.cat((x[..., :8], 4 * x[..., 8:]), dim=-1))
    assert (a - b).abs().max() < 1e-3
    assert (a - c).abs().max() > 1e-2


def test_odd_sizes_upsample_nearest_to_the_skip_size():
    model = build_model(SMALL).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 1, 7, 13, 10))
    assert y.shape == (1, 3, 7, 13, 10)


def test_final_activation_only_when_testing_and_inside_export_module():
    torch.manual_seed(1)
    model = build_model(SMALL).eval()
    x = torch.randn(2, 1, 8, 16, 8)
    with torch.no_grad():
        logits = model(x)
        exported = export_module(model, SMALL)(x)
        model.testing = True
        tested = model(x)
    assert logits.sum(1).sub(1).abs().max() > 1e-2
    assert torch.allclose(exported.sum(1), torch.ones_like(exported.sum(1)), atol=1e-5)
    assert (exported - torch.softmax(logits, dim=1)).abs().max() < 1e-6
    assert (tested - exported).abs().max() < 1e-6
    sig = dict(SMALL, final_sigmoid=True, out_channels=1)
    m = build_model(sig).eval()
    with torch.no_grad():
        assert (export_module(m, sig)(x) - torch.sigmoid(m(x))).abs().max() < 1e-6
    reg = dict(SMALL, is_segmentation=False)
    m = build_model(reg).eval()
    with torch.no_grad():
        assert (export_module(m, reg)(x) - m(x)).abs().max() == 0


def test_unet2d_uses_1x3x3_kernels_and_bcyx_export():
    cfg = dict(name="UNet2D", in_channels=1, out_channels=2, f_maps=8, num_groups=4, final_sigmoid=False)
    model = build_model(cfg).eval()
    state = model.state_dict()
    assert tuple(state["encoders.0.basic_module.SingleConv1.conv.weight"].shape) == (4, 1, 1, 3, 3)
    assert model.encoders[1].pooling.kernel_size == (1, 2, 2)
    x = torch.randn(1, 1, 32, 24)
    with torch.no_grad():
        y2d = export_module(model, cfg)(x)
        y3d = torch.softmax(model(x.unsqueeze(2)), dim=1).squeeze(2)
    assert y2d.shape == (1, 2, 32, 24)
    assert (y2d - y3d).abs().max() < 1e-6
    fields = card_fields(cfg)
    assert fields["input"]["axes"] == "bcyx"
    assert fields["input"]["divisor"] == {"y": 8, "x": 8}


@pytest.mark.parametrize("cfg", [SEGMENTATION_NET, dict(SMALL, name="ResidualUNet3D"),
                                 dict(SMALL, name="UNet2D", num_levels=4)])
def test_card_fields_make_a_valid_card_and_export_shapes_fit_the_divisor(cfg):
    fields = card_fields(cfg)
    card = ModelCard.from_dict({"family": "unet", "name": "t", **fields})
    divisor = 2 ** (UNetConfig.from_dict(cfg).levels - 1)
    assert set(card.input.divisor.values()) == {divisor}
    assert card.tile_invariant is False
    assert card.normalization.kind == "minmax" and card.normalization.symmetric and card.normalization.clip
    assert card.output.channels == cfg["out_channels"]
    assert all(v % divisor == 0 for v in card.default_tile.values())
    shapes = export_shapes(cfg)
    assert len(shapes) >= 2 and len(set(shapes)) == len(shapes)
    for shape in shapes:
        assert len(shape) == len(card.input.axes)
        assert all(s % divisor == 0 for s in shape[2:])


def test_registry_finds_the_family():
    family = get_family("unet")
    assert family.name == "unet" and family.export_module is export_module
