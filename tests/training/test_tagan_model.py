"""TA-GAN networks: seed layout (keys, parameter counts), inference modes, card fields and ONNX export."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from scopert.card import ModelCard
from scopert.errors import ConfigError
from scopert.training.tagan import model as tagan
from scopert.training.common.registry import get_family


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN running stats and affine non-trivial values so the modes really differ."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def _w2s_crop(data_dir, size: int, channels: int = 1) -> torch.Tensor:
    """A real noisy widefield crop mapped to [-1, 1] like the seed's /255 -> Normalize(0.5, 0.5)."""
    stack = tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")
    crop = stack[:channels, 100 : 100 + size, 200 : 200 + size].astype(np.float32)
    return torch.from_numpy(crop / 127.5 - 1.0)[None]


def test_generator_matches_seed_layout_and_parameter_count():
    g = tagan.build_model({"role": "generator", "arch": "resnet_9blocks", "input_nc": 1, "output_nc": 1})
    keys = list(g.state_dict())
    assert len(keys) == 140
    assert sum(p.numel() for p in g.parameters()) == 11_370_881
    assert "model.1.bias" not in keys and "model.26.bias" in keys  # only the head conv has a bias
    for i in range(10, 19):
        assert f"model.{i}.conv_block.6.weight" in keys and f"model.{i}.conv_block.7.running_var" in keys
    drop = g.model[10].conv_block[4]
    assert isinstance(drop, nn.Dropout) and drop.p == 0.5
    assert isinstance(g.model[0], nn.ReflectionPad2d) and isinstance(g.model[27], nn.Tanh)
    no_drop = tagan.build_model({"use_dropout": False, "ngf": 8})
    assert no_drop.model[10].conv_block[4].p == 0.0  # the seed keeps a Dropout(0) so indices do not move


def test_segmentor_has_no_dropout_layer_and_seed_count():
    s = tagan.build_model({"role": "segmentor", "arch": "resnet_6blocks"})
    keys = list(s.state_dict())
    assert len(keys) == 104
    assert sum(p.numel() for p in s.parameters()) == 7_828_865
    assert not any(isinstance(m, nn.Dropout) for m in s.modules())
    assert "model.10.conv_block.5.weight" in keys and "model.15.conv_block.6.running_mean" in keys
    assert "model.23.weight" in keys and "model.23.bias" in keys


def test_unet_layout_shapes_and_skip_quirk():
    u = tagan.build_model({"role": "segmentor", "arch": "unet_128", "output_nc": 2, "ngf": 8}).eval()
    keys = list(u.state_dict())
    assert keys[0] == "model.model.0.weight" and "model.model.0.bias" not in keys
    assert "model.model.1.model.3.model.1.weight" in keys and keys[-2:] == [
        "model.model.3.weight",
        "model.model.3.bias",
    ]
    _randomize(u)
    x = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        y = u(x)
    assert y.shape == (1, 2, 128, 128) and y.abs().max() <= 1.0
    # Every inner level concatenates LeakyReLU(x), not x (the seed's in-place LeakyReLU overwrites its input).
    inner = u.model.model[1]
    h = torch.randn(1, 8, 64, 64)
    with torch.no_grad():
        out = inner(h)
    assert torch.equal(out[:, :8], nn.functional.leaky_relu(h, 0.2))
    assert tagan.TaganConfig.from_dict({"arch": "unet_256"}).divisor == 256


def test_patchgan_discriminator_shape_and_keys():
    d = tagan.build_model({"role": "discriminator", "arch": "basic", "input_nc": 2, "ngf": 8})
    keys = list(d.state_dict())
    assert keys[:3] == ["model.0.weight", "model.0.bias", "model.2.weight"] and "model.2.bias" not in keys
    assert d(torch.randn(1, 2, 64, 64)).shape == (1, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6
    with pytest.raises(ConfigError, match="discriminator"):
        tagan.card_fields({"role": "discriminator", "arch": "basic"})


@pytest.mark.parametrize(
    "cfg,size",
    [({"arch": "resnet_9blocks", "ngf": 8}, 64), ({"role": "segmentor", "arch": "unet_128", "ngf": 8}, 128)],
)
def test_seed_test_mode_equals_train_mode_without_dropout(data_dir, cfg, size):
    model = _randomize(tagan.build_model(cfg))
    x = _w2s_crop(data_dir, size)
    seed_like = copy.deepcopy(model).train()
    for m in seed_like.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    with torch.no_grad():
        ref = seed_like(x)
        ours = tagan.export_module(model, {**cfg, "inference_mode": "seed_test"})(x)
        evaluated = tagan.export_module(model, cfg)(x)
        plain_eval = copy.deepcopy(model).eval()(x)
    assert (ours - ref).abs().max().item() < 1e-5
    assert (evaluated - plain_eval).abs().max().item() == 0.0
    assert (evaluated - ref).abs().max().item() > 1e-3  # the two modes really differ
    exported = tagan.export_module(model, {**cfg, "inference_mode": "seed_test"})
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in exported.modules())
    assert any(isinstance(m, nn.InstanceNorm2d) and m.affine for m in exported.modules())


def test_card_fields_modes_and_normalization():
    fam = get_family("tagan")
    fields = fam.card_fields({"input_nc": 2, "output_nc": 2})
    card = ModelCard.from_dict({"family": "tagan", "name": "t", **fields})
    assert card.input.axes == "bcyx" and card.input.channels == 2 and card.output.channels == 2
    assert card.input.divisor == {"y": 4, "x": 4}
    assert card.normalization.kind == "minmax" and card.normalization.symmetric
    assert card.tile_invariant is True
    assert card.postprocess["range"] == [-1.0, 1.0]
    assert "compat_8bit" in card.notes
    compat = fam.card_fields({"compat_8bit": True, "inference_mode": "seed_test"})
    assert compat["normalization"]["kind"] == "fixed"
    assert (compat["normalization"]["offset"], compat["normalization"]["scale"]) == (127.5, 127.5)
    assert compat["normalization"]["clip"] is True and compat["tile_invariant"] is False
    unet = fam.card_fields({"role": "segmentor", "arch": "unet_128", "output_nc": 2})
    assert unet["input"]["divisor"] == {"y": 128, "x": 128}
    for cfg in ({}, {"arch": "unet_256"}):
        shapes = fam.export_shapes(cfg)
        d = tagan.TaganConfig.from_dict(cfg).divisor
        assert len(shapes) == 2 and shapes[0] != shapes[1]
        assert all(s[2] % d == 0 and s[3] % d == 0 for s in shapes)


def test_bad_configs_name_the_problem():
    with pytest.raises(ConfigError, match="unet_64"):
        tagan.build_model({"arch": "unet_64"})
    with pytest.raises(ConfigError, match="'ngff'"):
        tagan.build_model({"ngff": 8})
    with pytest.raises(ConfigError, match="inference_mode"):
        tagan.build_model({"inference_mode": "train"})


@pytest.mark.parametrize("mode", ["eval", "seed_test"])
def test_onnx_export_uses_reflect_pad_and_instance_norm(mode):
    import onnx
    import onnxruntime as ort

    cfg = {"arch": "resnet_6blocks", "ngf": 8, "inference_mode": mode}
    module = tagan.export_module(_randomize(tagan.build_model(cfg)), cfg)
    buf = io.BytesIO()
    torch.onnx.export(
        module,
        (torch.randn(1, 1, 32, 32),),
        buf,
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "b", 2: "y", 3: "x"}, "output": {0: "b", 2: "y", 3: "x"}},
    )
    proto = onnx.load_from_string(buf.getvalue())
    pads = [n for n in proto.graph.node if n.op_type == "Pad"]
    modes = [onnx.helper.get_attribute_value(a) for n in pads for a in n.attribute if a.name == "mode"]
    assert len(pads) == 2 + 2 * 6 and modes == [b"reflect"] * len(pads)  # stem, head and 2 per block
    ops = {n.op_type for n in proto.graph.node}
    assert ("InstanceNormalization" in ops) == (mode == "seed_test")
    x = torch.randn(1, 1, 48, 40)
    got = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    assert np.abs(got - want).max() < 1e-4
