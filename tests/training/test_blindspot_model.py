"""The blindspot family (SHINE): parameter counts, dilation tables, the blind spot itself, and the static export."""

from __future__ import annotations

import pytest
import torch

from scopert.card import ModelCard
from scopert.errors import ConfigError
from scopert.training.blindspot.model import (
    build_model,
    card_fields,
    export_module,
    export_shapes,
    ring_dilations,
    ring_kernel,
)
from scopert.training.common.registry import get_family

# seeds.md section 4.2 (frame_num 5, filter 64)
SEED_TABLE = {
    "1x1_blind": (1, [5, 8, 10, 11], [3, 6, 8, 9], 1_086_128),
    "3x3_blind": (2, [6, 9, 10, 11], [4, 7, 8, 9], 1_088_432),
    "5x5_blind": (3, [7, 9, 10, 11], [5, 7, 8, 9], 1_090_736),
    "9x9_blind": (5, [9, 10, 11, 11], [7, 8, 9, 9], 1_095_344),
}


@pytest.mark.parametrize("name", sorted(SEED_TABLE))
def test_parameter_counts_and_dilations_match_the_seed_table(name):
    first, dil, res, count = SEED_TABLE[name]
    model = build_model({"name": name})
    assert sum(p.numel() for p in model.parameters()) == count
    assert model.first_output.dilation == first
    assert [m.dilation for m in model.dilated_convs] == dil
    assert [m.dilation for m in model.dilated_convs_res] == res
    assert ring_dilations(model.config.blind) == (first, dil, res)
    state = model.state_dict()
    blind = model.config.blind
    assert [k for k in state if k.startswith("convolution_layer0_a.")] == [
        f"convolution_layer0_a.{j}.0.weight" for j in range(blind + 1)
    ]
    assert tuple(state["convolution_layer0_a.0.0.weight"].shape) == (16, 4, 3, 3)
    assert tuple(state["convolution_layer0_b.weight"].shape) == (48, 1, 1, 1)
    assert tuple(state["first_output.params"].shape) == (64, 64, 8)
    assert tuple(state["outconvs.0.weight"].shape) == (288, 576, 1, 1)
    assert tuple(state["upsample_list.3.1.weight"].shape) == (64, 64, 1, 1)
    assert not any(k.endswith(".bias") for k in state)


def test_single_frame_layout():
    model = build_model({"name": "3x3_blind", "frame_num": 1, "filter": 8})
    state = model.state_dict()
    assert not any(k.startswith("convolution_layer0_a") for k in state)
    assert tuple(state["convolution_layer0_b.weight"].shape) == (8, 1, 1, 1)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (1, 1, 64, 64)


def test_ring_kernel_has_a_zero_centre_in_the_seed_order():
    params = torch.arange(1.0, 9.0).reshape(1, 1, 8)
    kernel = ring_kernel(params)[0, 0]
    assert kernel.tolist() == [[1.0, 2.0, 3.0], [4.0, 0.0, 5.0], [6.0, 7.0, 8.0]]


@pytest.mark.parametrize("name,radius", [("1x1_blind", 0), ("3x3_blind", 1), ("5x5_blind", 2), ("9x9_blind", 4)])
def test_output_pixel_is_blind_to_the_centre_frame_around_it(name, radius):
    torch.manual_seed(3)
    model = build_model({"name": name, "filter": 8}).double().eval()
    x = torch.randn(1, 5, 64, 64, dtype=torch.float64, requires_grad=True)
    py, px = 32, 29
    model(x)[0, 0, py, px].backward()
    grad = x.grad[0]
    centre = grad[2]
    box = centre[py - radius:py + radius + 1, px - radius:px + radius + 1]
    assert torch.count_nonzero(box) == 0
    # the ring just outside the blind spot is seen (first_output's taps sit exactly there)
    r = radius + 1
    ring = [centre[py + dy, px + dx] for dy in (-r, 0, r) for dx in (-r, 0, r) if (dy, dx) != (0, 0)]
    assert all(v != 0 for v in ring)
    # the neighbouring frames are not blind at the pixel itself
    for t in (0, 1, 3, 4):
        assert grad[t, py, px] != 0
    # the blind region is no larger than the box: the centre frame is seen nearly everywhere else
    assert torch.count_nonzero(centre[py - 20:py + 21, px - 20:px + 21]) == 41 * 41 - (2 * radius + 1) ** 2


def test_export_module_with_static_dilated_convs_equals_the_original():
    torch.manual_seed(4)
    cfg = {"name": "5x5_blind", "filter": 16}
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # larger weights so the output is far from zero and a mismatch would show
    static = export_module(model, cfg)
    assert not any(type(m).__name__ == "RingConv2d" for m in static.modules())
    dilations = sorted({m.dilation[0] for m in static.modules() if isinstance(m, torch.nn.Conv2d)})
    assert dilations == [1, 3, 5, 7, 8, 9, 10, 11]  # 3x3 convs, first 3, dil 7,9,10,11, res 5,7,8,9
    x = torch.randn(2, 5, 128, 64)
    with torch.no_grad():
        ref, out = model(x), static(x)
    assert ref.abs().mean() > 1e-2
    assert (ref - out).abs().max() < 1e-5
    # the original module is untouched by the export copy
    assert type(model.first_output).__name__ == "RingConv2d"


def test_seed_padding_reproduces_the_over_padding_and_crops_back():
    torch.manual_seed(5)
    model = build_model({"name": "3x3_blind", "filter": 8}).eval()
    minimal = build_model({"name": "3x3_blind", "filter": 8, "pad_mode": "minimal"}).eval()
    minimal.load_state_dict(model.state_dict())
    assert model.pad_amounts(70, 64) == (58, 64)  # public SHINE pads an aligned width by 64 too
    assert minimal.pad_amounts(70, 64) == (58, 0)
    assert model.pad_amounts(128, 64) == (0, 0)
    x = torch.randn(1, 5, 70, 64)
    with torch.no_grad():
        y = model(x)
        manual = model.core(torch.nn.functional.pad(x, [0, 64, 0, 58]))[..., :70, :64]
        y_min = minimal(x)
    assert y.shape == (1, 1, 70, 64)
    assert (y - manual).abs().max() == 0
    assert (y - y_min).abs().max() > 0  # the extra zero columns reach the border pixels


def test_card_fields_and_export_shapes():
    cfg = {"name": "3x3_blind", "frame_num": 3, "filter": 8}
    card = ModelCard.from_dict({"family": "blindspot", "name": "t", **card_fields(cfg)})
    assert card.input.axes == "btyx" and card.input.time_window == 3
    assert card.input.divisor == {"y": 64, "x": 64}
    assert card.output.axes == "bcyx" and card.output.channels == 1
    assert card.normalization.kind == "zscore" and card.normalization.per_frame
    assert card.postprocess == {"kind": "minmax_to_centre_frame"}
    assert card.tile_invariant is False
    shapes = export_shapes(cfg)
    assert len(shapes) == 2 and all(s[1] == 3 and s[2] % 64 == 0 and s[3] % 64 == 0 for s in shapes)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for shape in shapes:
            assert export_module(model, cfg)(torch.randn(*shape)).shape == (shape[0], 1, shape[2], shape[3])


@pytest.mark.parametrize("bad,match", [({"name": "4x4_blind"}, "NxN_blind"), ({"name": "3x5_blind"}, "NxN_blind"),
                                       ({"filter": 30}, "multiple of 4"), ({"in_channels": 3}, "in_channels"),
                                       ({"blocks": 14}, "unknown key")])
def test_bad_configs_are_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        build_model(bad)


def test_registry_finds_the_family():
    assert get_family("blindspot").export_module is export_module
