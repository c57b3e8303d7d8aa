"""SHINE Lightning checkpoint import, proven by equal outputs; frame/blind-size mismatches and other families named."""

from __future__ import annotations

import json

import pytest
import torch

from scopert.errors import CheckpointError, ConfigError
from scopert.training.blindspot.importer import import_lightning_blindspot
from scopert.training.blindspot.model import build_model, export_module
from scopert.training.unet.model import build_model as build_unet
from scopert.training.common.runfolder import load_model


def _shine(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)  # output well away from zero, so a misplaced weight would show
    return model.eval()


def _write_lightning_checkpoint(path, model, epoch=38):
    """The layout of a Lightning ModelCheckpoint file from SHINE: weights under state_dict, prefixed 'model.'."""
    torch.save({
        "epoch": epoch, "global_step": 4560, "pytorch-lightning_version": "2.1.0",
        "state_dict": {"model." + k: v.clone() for k, v in model.state_dict().items()},
        "loops": {"fit_loop": {"state_dict": {}}}, "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {}},
        "optimizer_states": [torch.optim.Adam(model.parameters(), lr=1e-3).state_dict()], "lr_schedulers": [],
    }, path)
    return path


def test_weights_alone_give_the_architecture_and_equal_outputs(tmp_path):
    original = _shine({"name": "5x5_blind", "frame_num": 3, "filter": 8})
    ckpt = _write_lightning_checkpoint(tmp_path / "epoch=38.ckpt", original)

    info = import_lightning_blindspot(ckpt, tmp_path / "run")
    assert info.family == "blindspot"
    assert info.model_config == {"name": "5x5_blind", "filter": 8, "out_channels": 1, "frame_num": 3}
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["source"]["format"] == "lightning-shine"
    assert run["train"]["epoch"] == 38 and run["train"]["global_step"] == 4560

    _, imported = load_model(tmp_path / "run")
    torch.manual_seed(1)
    x = torch.randn(1, 3, 70, 64)  # unaligned: exercises the seed's pad-and-crop too
    with torch.no_grad():
        ref, out = original(x), imported(x)
        aligned = torch.randn(1, 3, 64, 128)
        ref_static = export_module(original, info.model_config)(aligned)
        out_static = export_module(imported, info.model_config)(aligned)
    assert ref.abs().mean() > 1e-2
    assert (ref - out).abs().max() == 0
    assert (ref_static - out_static).abs().max() == 0


def test_single_frame_needs_the_blind_spot_size(tmp_path):
    original = _shine({"name": "9x9_blind", "frame_num": 1, "filter": 8}, seed=2)
    ckpt = _write_lightning_checkpoint(tmp_path / "epoch=3.ckpt", original)
    with pytest.raises(ConfigError, match="--model"):
        import_lightning_blindspot(ckpt, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    info = import_lightning_blindspot(ckpt, tmp_path / "run", model="9x9_blind", frames=1, name="em")
    assert info.model_config["name"] == "9x9_blind" and info.model_config["frame_num"] == 1
    assert info.train_config["name"] == "em"
    _, imported = load_model(info.folder)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(imported(x), original(x))


def test_frame_count_mismatch_names_both_numbers(tmp_path):
    ckpt = _write_lightning_checkpoint(tmp_path / "e.ckpt", _shine({"name": "3x3_blind", "filter": 8}))
    with pytest.raises(CheckpointError, match=r"trained on 5 frames, but 3 were given"):
        import_lightning_blindspot(ckpt, tmp_path / "run", frames=3)
    with pytest.raises(CheckpointError, match=r"holds a 3x3 blind-spot model, but --model 5x5_blind"):
        import_lightning_blindspot(ckpt, tmp_path / "run", model="5x5_blind")
    with pytest.raises(ConfigError, match="NxN_blind"):
        import_lightning_blindspot(ckpt, tmp_path / "run", model="3x3")
    assert not (tmp_path / "run").exists()


def test_checkpoint_of_another_family_names_its_first_key(tmp_path):
    unet = build_unet({"name": "UNet3D", "in_channels": 1, "out_channels": 2, "f_maps": 8, "num_levels": 3})
    ckpt = _write_lightning_checkpoint(tmp_path / "unet.ckpt", unet)
    with pytest.raises(CheckpointError, match=r"key 'model\.encoders\.0\.basic_module\.SingleConv1\.groupnorm\.weight' "
                                              r"does not fit"):
        import_lightning_blindspot(ckpt, tmp_path / "run")
    seed_3dunet = tmp_path / "best_checkpoint.pytorch"
    torch.save({"epoch": 1, "model_state_dict": unet.state_dict()}, seed_3dunet)
    with pytest.raises(CheckpointError, match="no 'state_dict'"):
        import_lightning_blindspot(seed_3dunet, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_inconsistent_shine_weights_report_the_shape(tmp_path):
    model = _shine({"name": "3x3_blind", "filter": 8})
    ckpt = tmp_path / "bad.ckpt"
    state = {"model." + k: v for k, v in model.state_dict().items()}
    state["model.outconvs.0.weight"] = torch.zeros(40, 72, 1, 1)  # filter 8: 9*8 -> 36 channels in SHINE
    torch.save({"state_dict": state}, ckpt)
    with pytest.raises(CheckpointError, match=r"outconvs\.0\.weight has shape \(40, 72, 1, 1\) in the checkpoint "
                                              r"but \(36, 72, 1, 1\)"):
        import_lightning_blindspot(ckpt, tmp_path / "run")
    del state["model.outconvs.0.weight"]
    torch.save({"state_dict": state}, ckpt)
    with pytest.raises(CheckpointError, match=r"Missing keys \(1\): outconvs\.0\.weight"):
        import_lightning_blindspot(ckpt, tmp_path / "run")


def test_imported_denoiser_agrees_on_real_em_frames(tmp_path, data_dir):
    """Five consecutive ISBI 2012 ssTEM sections, z-scored per frame as SHINE's predict_step does."""
    import tifffile

    frames = tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif", key=range(5))
    frames = frames[:, 100:164, 200:328].astype("float32")
    frames = (frames - frames.mean(axis=(1, 2), keepdims=True)) / frames.std(axis=(1, 2), ddof=1, keepdims=True)
    x = torch.from_numpy(frames)[None]
    original = _shine({"name": "3x3_blind", "filter": 8}, seed=7)
    ckpt = _write_lightning_checkpoint(tmp_path / "epoch=1.ckpt", original)
    info = import_lightning_blindspot(ckpt, tmp_path / "run", model="3x3_blind", frames=5)
    _, imported = load_model(info.folder)
    with torch.no_grad():
        ref, out = original(x), imported(x)
    assert ref.shape == (1, 1, 64, 128)
    assert float(ref.std()) > 1e-3
    assert (ref - out).abs().max() == 0
