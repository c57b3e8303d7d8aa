"""CNNT: seed layout and parameter count, exact attention math, resize equivalence, FP16-safe scaling."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from scopert.card import ModelCard
from scopert.errors import ConfigError
from scopert.training.cnnt import model as cnnt
from scopert.training.common.registry import get_family

SMALL = {"blocks": [8, 16], "blocks_per_set": 1, "n_head": 4, "height": 32, "width": 32, "time": 4}


def _seed_attention(att: cnnt.CnnSelfAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """The seed's attention written out: tokens of hc*H*W values, logits * 1/sqrt(hc*H*W), y over time."""
    b, t, c, h, w = x.shape
    nh = att.n_head
    hc = c // nh
    d = hc * h * w
    q = att.query(x).view(b, t, nh, hc, h, w).transpose(1, 2).reshape(b, nh, t, d)
    k = att.key(x).view(b, t, nh, hc, h, w).transpose(1, 2).reshape(b, nh, t, d)
    v = att.value(x).view(b, t, nh, hc, h, w).transpose(1, 2).reshape(b, nh, t, d)
    logits = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
    if causal:
        logits = logits.masked_fill(torch.tril(torch.ones(t, t)) == 0, float("-inf"))
    y = F.softmax(logits, dim=-1) @ v
    return att.output_proj(y.transpose(1, 2).contiguous().view(b, t, c, h, w))


def _frames(data_dir, t: int, size: int) -> torch.Tensor:
    """Real 2D+t brightfield frames scaled to [0, 1], as [1, T, 1, H, W]."""
    stack = tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")
    crop = stack[:t, 100 : 100 + size, 200 : 200 + size].astype(np.float32) / 255.0
    return torch.from_numpy(crop)[None, :, None]


def test_default_model_matches_seed_count_and_keys():
    model = cnnt.build_model({})
    keys = list(model.state_dict())
    masks = cnnt.seed_mask_keys(model)
    assert sum(p.numel() for p in model.parameters()) == 12_279_905
    assert len(keys) + len(masks) == 280 and len(masks) == 20
    assert "cnnt.down1.blocks.0.attn.mask" in masks and not any(k.endswith(".mask") for k in keys)
    assert sum(b.numel() for b in model.buffers()) == 0  # no 80 MB mask kept
    for key in (
        "pre_cnnt.1.conv2d.bias",
        "cnnt.up2.input_proj.conv2d.weight",
        "cnnt.final.blocks.3.mlp.2.conv2d.weight",
        "cnnt.output_proj.conv2d.weight",
        "pos_cnnt.1.conv2d.bias",
    ):
        assert key in keys
    sd = model.state_dict()
    assert sd["cnnt.up2.input_proj.conv2d.weight"].shape == (96, 160, 3, 3)
    assert sd["cnnt.final.input_proj.conv2d.weight"].shape == (64, 128, 3, 3)
    assert sd["cnnt.output_proj.conv2d.weight"].shape == (32, 64, 3, 3)


def test_seed_mask_buffers_load_and_are_dropped():
    model = cnnt.build_model(SMALL)
    state = dict(model.state_dict())
    for key in cnnt.seed_mask_keys(model):
        state[key] = torch.tril(torch.ones(1000, 1000)).view(1, 1, 1000, 1000)
    result = cnnt.build_model(SMALL).load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_seed_math(causal):
    torch.manual_seed(0)
    att = cnnt.CnnSelfAttention(16, n_head=4, kernel_size=3, padding=1, dropout_p=0.1, is_causal=causal).eval()
    x = torch.randn(2, 5, 16, 12, 20)
    with torch.no_grad():
        ours, ref = att(x), _seed_attention(att, x, causal)
    rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    assert rel < 1e-5
    if causal:  # frame 0 only sees itself: changing later frames leaves it unchanged
        x2 = x.clone()
        x2[:, 1:] += 1.0
        with torch.no_grad():
            assert torch.allclose(att(x2)[:, 0], ours[:, 0], atol=1e-6)


def test_prescaled_logits_stay_in_fp16_range():
    """With d = 4*160*160 the raw q.k overflows FP16; the d**-0.25 pre-scaled product does not."""
    torch.manual_seed(1)
    d = 4 * 160 * 160
    q = torch.randn(1, 1, 4, d) * 2.0
    k = q + 0.1 * torch.randn(1, 1, 4, d)
    raw = q @ k.transpose(-2, -1)
    assert raw.abs().max() > 65504  # the seed's order of operations overflows in FP16
    s = d**-0.25
    scaled = (q * s) @ (k * s).transpose(-2, -1)
    assert scaled.abs().max() < 65504
    ref = raw / math.sqrt(d)
    assert ((scaled - ref).abs().max() / ref.abs().max()).item() < 1e-5
    half = (q.half() * s) @ (k.half() * s).transpose(-2, -1)
    assert torch.isfinite(half).all() and ((half.float() - ref).abs().max() / ref.abs().max()).item() < 1e-2


@pytest.mark.parametrize("shape", [(2, 3, 5, 16, 24), (1, 2, 3, 7, 9)])
def test_resizes_equal_5d_trilinear(shape):
    x = torch.randn(*shape)
    down = F.interpolate(
        x, scale_factor=(1.0, 0.5, 0.5), mode="trilinear", align_corners=False, recompute_scale_factor=False
    )
    up = F.interpolate(
        x, scale_factor=(1.0, 2.0, 2.0), mode="trilinear", align_corners=False, recompute_scale_factor=False
    )
    assert (cnnt.resize_frames(x, "down") - down).abs().max().item() < 1e-6
    assert (cnnt.resize_frames(x, "up") - up).abs().max().item() < 1e-6


@pytest.mark.parametrize(
    "blocks,norm",
    [
        ([8, 16], "instance"),
        ([8, 16], "layer"),
        ([8, 16, 24], "batch"),
        ([8, 16, 24], "mixed"),
        ([8, 16, 24, 32], "layer"),
        ([8, 16, 24, 32], "mixed"),
    ],
)
def test_levels_and_norm_modes(data_dir, blocks, norm):
    cfg = {**SMALL, "blocks": blocks, "norm_mode": norm}
    model = cnnt.build_model(cfg).eval()
    x = _frames(data_dir, 4, 32)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    sd = model.state_dict()
    last = "final"
    if norm == "layer":
        assert sd["cnnt.down2.blocks.0.ln1.weight" if len(blocks) > 2 else "cnnt.up1.blocks.0.ln1.weight"].shape == (
            16,
            16,
            16,
        )
    if norm in ("batch", "mixed"):
        assert "cnnt.up1.blocks.0.bn1.running_var" in sd
    if norm == "mixed":  # instance norm (no weights) at the first and last BlockSet
        assert not any(k.startswith(("cnnt.down1.blocks.0.bn", f"cnnt.{last}.blocks.0.bn")) for k in sd)
    assert sd[f"cnnt.{last}.input_proj.conv2d.weight"].shape[:2] == (
        blocks[1],
        blocks[0] + blocks[min(2, len(blocks) - 1)],
    )


def test_card_fields_and_export_shapes():
    fam = get_family("cnnt")
    for blocks, div in (([8, 16], 2), ([8, 16, 24], 4), ([8, 16, 24, 32], 8)):
        fields = fam.card_fields({**SMALL, "blocks": blocks})
        card = ModelCard.from_dict({"family": "cnnt", "name": "c", **fields})
        assert card.input.axes == "btcyx" and card.output.axes == "btcyx"
        assert card.input.time_window == 4 and card.input.divisor == {"y": div, "x": div}
        assert card.tile_invariant is False
        assert (card.normalization.kind, card.normalization.offset, card.normalization.scale) == ("fixed", 0, 65536)
        assert card.normalization.clip is True
        shapes = fam.export_shapes({**SMALL, "blocks": blocks})
        assert len(shapes) == 2 and all(s[3] % div == 0 and s[4] % div == 0 for s in shapes)
        assert all(shapes[0][i] != shapes[1][i] for i in (1, 3, 4))
    layer = fam.export_shapes({**SMALL, "norm_mode": "layer"})
    assert layer[0][3:] == layer[1][3:] == (32, 32) and layer[0][1] != layer[1][1]


def test_bad_configs_name_the_problem():
    with pytest.raises(ConfigError, match="n_head"):
        cnnt.build_model({**SMALL, "blocks": [8, 10]})
    with pytest.raises(ConfigError, match="2 to 4"):
        cnnt.build_model({**SMALL, "blocks": [8, 16, 24, 32, 40]})
    with pytest.raises(ConfigError, match="stride"):
        cnnt.build_model({**SMALL, "stride": 2})
    with pytest.raises(ConfigError, match="'heads'"):
        cnnt.build_model({**SMALL, "heads": 4})


def test_onnx_export_is_dynamic_in_t_h_w():
    import onnxruntime as ort

    torch.manual_seed(2)
    model = cnnt.build_model({**SMALL, "blocks": [8, 16, 24]}).eval()
    buf = io.BytesIO()
    axes = {0: "b", 1: "t", 3: "y", 4: "x"}
    torch.onnx.export(
        model,
        (torch.rand(1, 4, 1, 32, 32),),
        buf,
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": axes, "output": axes},
    )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 1, 24, 40)
    with torch.no_grad():
        want = model(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())
