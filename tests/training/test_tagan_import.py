"""TA-GAN .pth import, proven by equal outputs of the imported run folder and the original networks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from scopert.errors import CheckpointError, ConfigError, OutputError
from scopert.training.tagan.importer import import_tagan, parse_opt_txt
from scopert.training.tagan import model as tagan
from scopert.training.common.runfolder import load_model, read_run_info

OPT_TEMPLATE = """----------------- Options ---------------
               batch_size: 8                             \t[default: 1]
                 dataroot: ./datasets/axons
                  gpu_ids: 0
                 input_nc: {input_nc}                             \t[default: 3]
                       lr: 0.0002
                     name: AxonalRings                   \t[default: experiment_name]
                      ngf: {ngf}                            \t[default: 64]
                     netG: {netG}
                     netS: {netS}
               no_dropout: {no_dropout}
                     norm: batch                         \t[default: instance]
                output_nc: {output_nc}                             \t[default: 3]
                   suffix:
----------------- End -------------------
"""


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def _opt(tmp_path, **kw) -> str:
    values = {
        "input_nc": 1,
        "output_nc": 1,
        "ngf": 8,
        "netG": "resnet_9blocks",
        "netS": "resnet_6blocks",
        "no_dropout": False,
    }
    values.update(kw)
    path = tmp_path / "train_opt.txt"
    path.write_text(OPT_TEMPLATE.format(**values))
    return str(path)


def _real_input(data_dir, channels: int = 1, size: int = 64) -> torch.Tensor:
    stack = tifffile.imread(data_dir / "w2s_8bit_pairs" / "w2s_avg1_noisy.tif")
    crop = stack[:channels, 40 : 40 + size, 300 : 300 + size].astype(np.float32)
    return torch.from_numpy(crop / 127.5 - 1.0)[None]


def test_parse_opt_txt_types(tmp_path):
    opts = parse_opt_txt(_opt(tmp_path, input_nc=2, no_dropout=True))
    assert opts["input_nc"] == 2 and opts["ngf"] == 8 and opts["lr"] == 0.0002
    assert opts["no_dropout"] is True and opts["netS"] == "resnet_6blocks" and opts["name"] == "AxonalRings"
    assert opts["suffix"] == ""
    empty = tmp_path / "empty.txt"
    empty.write_text("nothing here\n")
    with pytest.raises(ConfigError, match="option lines"):
        parse_opt_txt(empty)


def test_import_g_and_s_gives_equal_outputs(tmp_path, data_dir):
    g = _randomize(tagan.build_model({"ngf": 8}), 1)
    s = _randomize(tagan.build_model({"role": "segmentor", "arch": "resnet_6blocks", "ngf": 8}), 2)
    g_path, s_path = tmp_path / "1000_net_G.pth", tmp_path / "1000_net_S.pth"
    torch.save(g.state_dict(), g_path, _use_new_zipfile_serialization=False)  # torch 1.0 style file
    torch.save(s.state_dict(), s_path)
    info = import_tagan(g_path, tmp_path / "run", net_s=s_path, opt_txt=_opt(tmp_path), name="axons")
    assert info.family == "tagan" and info.model_config["arch"] == "resnet_9blocks"
    assert info.model_config["use_dropout"] is True and info.train_config["name"] == "axons"
    assert info.source["format"] == "tagan-pth" and len(info.source["sha256"]) == 64
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["train"]["segmentor_run"] == "segmentor"

    x = _real_input(data_dir)
    _, g2 = load_model(tmp_path / "run")
    seg_info, s2 = load_model(tmp_path / "run" / "segmentor")
    assert seg_info.model_config["role"] == "segmentor"
    with torch.no_grad():
        fake, fake2 = g(x), g2(x)
        assert fake.std() > 0.01
        assert torch.equal(fake, fake2)
        assert torch.equal(s(fake), s2(fake2))


def test_import_infers_unet_segmentor_and_two_channels_without_opt(tmp_path, data_dir):
    g = _randomize(tagan.build_model({"input_nc": 2, "output_nc": 2, "ngf": 8, "arch": "resnet_6blocks"}), 3)
    s = _randomize(tagan.build_model({"role": "segmentor", "arch": "unet_128", "output_nc": 2, "ngf": 8}), 4)
    torch.save(g.state_dict(), tmp_path / "G.pth")
    torch.save(s.state_dict(), tmp_path / "S.pth", _use_new_zipfile_serialization=False)
    info = import_tagan(tmp_path / "G.pth", tmp_path / "run", net_s=tmp_path / "S.pth")
    assert info.model_config["input_nc"] == 2 and info.model_config["arch"] == "resnet_6blocks"
    seg = read_run_info(tmp_path / "run" / "segmentor")
    assert seg.model_config["arch"] == "unet_128" and seg.model_config["output_nc"] == 2
    x = _real_input(data_dir, channels=2, size=128)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "run")[1](x), g(x))
        y = load_model(tmp_path / "run" / "segmentor")[1](x[:, :1])
        assert torch.equal(y, s(x[:, :1]))


def test_opt_that_disagrees_with_weights_names_tensor_and_shapes(tmp_path):
    g = tagan.build_model({"ngf": 8})
    torch.save(g.state_dict(), tmp_path / "G.pth")
    with pytest.raises(CheckpointError) as err:
        import_tagan(tmp_path / "G.pth", tmp_path / "run", opt_txt=_opt(tmp_path, ngf=16))
    msg = str(err.value)
    assert "'model.1.weight'" in msg and "(8, 1, 7, 7)" in msg and "(16, 1, 7, 7)" in msg
    assert not (tmp_path / "run" / "run.json").exists()
    with pytest.raises(CheckpointError, match="key .model.16.conv_block.1.weight. does not fit"):
        import_tagan(tmp_path / "G.pth", tmp_path / "run", opt_txt=_opt(tmp_path, netG="resnet_6blocks"))


def test_other_family_and_discriminator_are_refused(tmp_path):
    foreign = {"pre_cnnt.0.conv2d.weight": torch.zeros(16, 1, 3, 3), "pre_cnnt.0.conv2d.bias": torch.zeros(16)}
    torch.save(foreign, tmp_path / "cnnt.pt")
    with pytest.raises(CheckpointError, match="'pre_cnnt.0.conv2d.weight'.*another family"):
        import_tagan(tmp_path / "cnnt.pt", tmp_path / "run")
    d = tagan.build_model({"role": "discriminator", "arch": "basic", "input_nc": 2, "ngf": 8})
    torch.save(d.state_dict(), tmp_path / "D.pth")
    with pytest.raises(CheckpointError, match="discriminator"):
        import_tagan(tmp_path / "D.pth", tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not exist"):
        import_tagan(tmp_path / "missing.pth", tmp_path / "run")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        import_tagan(tmp_path / "junk.pth", tmp_path / "run")


def test_existing_run_is_not_overwritten_and_failed_g_removes_s(tmp_path):
    g = tagan.build_model({"ngf": 8})
    s = tagan.build_model({"role": "segmentor", "arch": "resnet_6blocks", "ngf": 8})
    torch.save(g.state_dict(), tmp_path / "G.pth")
    torch.save(s.state_dict(), tmp_path / "S.pth")
    import_tagan(tmp_path / "G.pth", tmp_path / "run")
    with pytest.raises(OutputError, match="already holds a run"):
        import_tagan(tmp_path / "G.pth", tmp_path / "run")
    torch.save({"model.0.weight": torch.zeros(8, 2, 4, 4)}, tmp_path / "bad_G.pth")
    with pytest.raises(CheckpointError):
        import_tagan(tmp_path / "bad_G.pth", tmp_path / "run2", net_s=tmp_path / "S.pth")
    assert not (tmp_path / "run2" / "segmentor").exists()
