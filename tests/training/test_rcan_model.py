"""The rcan family: parameter counts of the original, build order, channel attention, scaling, card fields."""

from __future__ import annotations

import pytest
import torch

from scopert.card import ModelCard, Normalization, TensorSpec
from scopert.errors import ConfigError
from scopert.training.rcan import model as rcan
from scopert.training.common.registry import get_family


def _conv_params(c_in: int, c_out: int, k: int, ndim: int) -> int:
    return c_out * c_in * k**ndim + c_out


def _expected_params(ndim: int, c: int, g: int, b: int, r: int) -> int:
    """build_rcan's parameter count written out layer by layer (independent of the module code)."""
    block = 2 * _conv_params(c, c, 3, ndim) + _conv_params(c, c // r, 1, ndim) + _conv_params(c // r, c, 1, ndim)
    group = b * block + (_conv_params(c, c, 3, ndim) if g > 1 else 0)
    return _conv_params(1, c, 3, ndim) + g * group + _conv_params(c, c, 3, ndim) + _conv_params(c, 1, 3, ndim)


def test_default_parameter_count_matches_3d_rcan():
    model = rcan.build_model(rcan.default_model_config(3))
    assert rcan.count_parameters(model) == 1_002_621
    assert len(rcan.conv_layers_in_build_order(model)) == 1 + 5 * (4 * 3 + 1) + 2 == 68


def test_config_json_parameter_count_three_groups():
    model = rcan.build_model({"num_residual_groups": 3})
    assert rcan.count_parameters(model) == 613_349


@pytest.mark.parametrize("ndim,c,g,b,r", [(2, 32, 5, 3, 8), (3, 8, 1, 2, 4), (2, 12, 2, 1, 3)])
def test_parameter_count_formula(ndim, c, g, b, r):
    cfg = {"ndim": ndim, "num_channels": c, "num_residual_groups": g, "num_residual_blocks": b, "channel_reduction": r}
    model = rcan.build_model(cfg)
    assert rcan.count_parameters(model) == _expected_params(ndim, c, g, b, r)
    n_conv = 1 + g * 4 * b + (g if g > 1 else 0) + 2
    assert len(rcan.conv_layers_in_build_order(model)) == n_conv


def test_single_group_has_no_group_tail_and_build_order():
    model = rcan.build_model({"num_residual_groups": 1, "num_residual_blocks": 2, "num_channels": 8})
    assert model.groups[0].tail is None
    names = [n for n, _ in rcan.conv_layers_in_build_order(model)]
    assert names == [
        "head",
        "groups.0.blocks.0.conv1", "groups.0.blocks.0.conv2",
        "groups.0.blocks.0.attention.down", "groups.0.blocks.0.attention.up",
        "groups.0.blocks.1.conv1", "groups.0.blocks.1.conv2",
        "groups.0.blocks.1.attention.down", "groups.0.blocks.1.attention.up",
        "tail", "out",
    ]
    two = rcan.build_model({"num_residual_groups": 2, "num_residual_blocks": 1, "num_channels": 8})
    names2 = [n for n, _ in rcan.conv_layers_in_build_order(two)]
    assert names2.index("groups.0.tail") == 5 and names2.index("groups.1.tail") == 10
    # every conv appears once and the list covers all parameters
    assert sum(m.weight.numel() + m.bias.numel() for _, m in rcan.conv_layers_in_build_order(two)) == \
        rcan.count_parameters(two)


def test_residual_scaling_zero_reduces_blocks_to_identity():
    """With scaling 0 every RCAB is the identity; the net is then out(tail(h) + h), h = head(2x - 1)."""
    torch.manual_seed(0)
    cfg = {"ndim": 3, "num_channels": 4, "num_residual_groups": 1, "num_residual_blocks": 2, "channel_reduction": 2}
    model = rcan.build_model({**cfg, "residual_scaling": 0.0}).eval()
    x = torch.rand(1, 1, 5, 9, 7)
    with torch.no_grad():
        h = model.head(2 * x - 1)
        expected = 0.5 * model.out(model.tail(h) + h) + 0.5
        got = model(x)
        unscaled = rcan.build_model(cfg).eval()
        unscaled.load_state_dict(model.state_dict())
        other = unscaled(x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert (other - got).abs().max().item() > 1e-4  # the blocks do contribute when scaling is 1


def test_output_is_half_y_plus_half_without_clipping():
    model = rcan.build_model({"ndim": 2, "num_channels": 4, "num_residual_groups": 1, "num_residual_blocks": 1,
                              "channel_reduction": 2}).eval()
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.fill_(3.0)
        y = model(torch.rand(2, 1, 8, 8))
    assert y.shape == (2, 1, 8, 8)
    assert torch.allclose(y, torch.full_like(y, 0.5 * 3.0 + 0.5))  # 2.0: outside [0,1], not clipped


def test_channel_attention_makes_tiles_depend_on_far_pixels():
    """A change far outside the receptive field still moves the output: the pool spans the whole tile."""
    torch.manual_seed(1)
    model = rcan.build_model({"ndim": 2, "num_channels": 4, "num_residual_groups": 1, "num_residual_blocks": 1,
                              "channel_reduction": 2}).eval()
    with torch.no_grad():
        model.groups[0].blocks[0].attention.down.bias.fill_(1.0)  # keep the ReLU bottleneck open
    x = torch.rand(1, 1, 48, 48)
    x2 = x.clone()
    x2[..., 40:, 40:] += 5.0  # 5 convs of size 3 -> receptive radius 5; the centre (10, 10) is far away
    with torch.no_grad():
        d = (model(x) - model(x2))[..., 10, 10].abs().item()
    assert d > 1e-6
    assert rcan.card_fields({"ndim": 2})["tile_invariant"] is False


def test_card_fields_and_export_shapes_build_a_valid_card():
    cfg = {"ndim": 3, "num_channels": 4, "num_residual_groups": 1, "num_residual_blocks": 1, "channel_reduction": 2,
           "input_shape": [8, 64, 96], "num_output_channels": 2}
    fields = rcan.card_fields(cfg)
    assert fields["default_tile"] == {"z": 8, "y": 64, "x": 96}
    assert fields["input"]["axes"] == "bczyx" and fields["output"]["channels"] == 2
    card = ModelCard(family="rcan", name="t", input=TensorSpec(**fields["input"]),
                     output=TensorSpec(**fields["output"]), tile_invariant=fields["tile_invariant"],
                     normalization=Normalization(**fields["normalization"]), postprocess=fields["postprocess"],
                     default_tile=fields["default_tile"], notes=fields["notes"])
    card.validate()
    shapes = rcan.export_shapes(cfg)
    assert len(shapes) >= 2 and len(set(shapes)) == len(shapes)
    model = rcan.build_model(cfg).eval()
    with torch.no_grad():
        for shape in shapes:
            y = model(torch.rand(shape))
            assert tuple(y.shape) == (shape[0], 2, *shape[2:])
    assert rcan.card_fields({"ndim": 2})["default_tile"] == {"y": 256, "x": 256}
    assert rcan.card_fields({})["input"]["axes"] == "bczyx"


def test_registered_family_builds_model():
    fam = get_family("rcan")
    model = fam.build_model({"ndim": 2, "num_channels": 8, "num_residual_groups": 2, "num_residual_blocks": 1})
    assert isinstance(model, rcan.RCAN)
    assert len(fam.export_shapes({"ndim": 2})[0]) == 4


@pytest.mark.parametrize("cfg,word", [
    ({"num_chanels": 8}, "num_chanels"),
    ({"num_channels": 4, "channel_reduction": 8}, "channel_reduction"),
    ({"ndim": 4}, "ndim"),
    ({"ndim": 3, "input_shape": [16, 256]}, "input_shape"),
    ({"num_output_channels": 0}, "num_output_channels"),
])
def test_bad_config_names_the_key(cfg, word):
    with pytest.raises(ConfigError, match=word):
        rcan.build_model(cfg)
