"""pytorch-3dunet checkpoint import, proven by equal outputs; bad checkpoints and YAMLs are named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from scopert.errors import CheckpointError, ConfigError, OutputError
from scopert.training.unet.importer import import_pytorch3dunet
from scopert.training.blindspot.model import build_model as build_blindspot
from scopert.training.unet.model import build_model, card_fields, export_module
from scopert.checksum import sha256_file
from scopert.training.common.runfolder import load_model

MODEL_SECTION = {"name": "UNet3D", "in_channels": 1, "out_channels": 2, "layer_order": "gcr", "f_maps": 8,
                 "num_groups": 4, "num_levels": 3, "final_sigmoid": False, "is_segmentation": True}


def _write_yaml(path, model_section, patch=(20, 48, 100)):
    data = {"model": model_section, "trainer": {"checkpoint_dir": "3dunet"},
            "loaders": {"test": {"slice_builder": {"name": "SliceBuilder", "patch_shape": list(patch),
                                                   "stride_shape": [10, 24, 50]}}}}
    path.write_text(yaml.safe_dump(data))
    return path


def _write_seed_checkpoint(path, model, data_parallel=True):
    """The layout of pytorch-3dunet's trainer._save_checkpoint, with the DataParallel 'module.' prefix."""
    prefix = "module." if data_parallel else ""
    torch.save({
        "epoch": 7, "num_iterations": 1234,
        "model_state_dict": {prefix + k: v.clone() for k, v in model.state_dict().items()},
        "best_eval_score": np.float64(0.81), "eval_score_higher_is_better": True,
        "optimizer_state_dict": torch.optim.Adam(model.parameters(), lr=1e-4).state_dict(),
        "device": torch.device("cpu"), "max_num_epochs": 100, "max_num_iterations": 100000,
    }, path)
    return path


def _seed_model(section, seed=0):
    torch.manual_seed(seed)
    model = build_model(section)
    with torch.no_grad():  # non-default affine GroupNorm params, so a swapped key would show
        for name, p in model.named_parameters():
            if "groupnorm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("section", [
    MODEL_SECTION,
    dict(MODEL_SECTION, name="ResidualUNet3D", layer_order="gce", f_maps=4, num_levels=None, final_sigmoid=True,
         out_channels=1),
    dict(MODEL_SECTION, name="UNet2D", layer_order="cbr", in_channels=2),
])
def test_imported_run_folder_gives_the_same_output_as_the_original(tmp_path, section):
    section = {k: v for k, v in section.items() if v is not None}
    original = _seed_model(section)
    ckpt = _write_seed_checkpoint(tmp_path / "best_checkpoint.pytorch", original)
    config = _write_yaml(tmp_path / "test.yaml", section)

    info = import_pytorch3dunet(ckpt, config, tmp_path / "run", name="segnet")
    assert info.folder == tmp_path / "run" and info.family == "unet"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["source"] == {"path": str(ckpt.resolve()), "sha256": sha256_file(ckpt), "format": "pytorch-3dunet"}
    assert run["train"]["name"] == "segnet" and run["train"]["epoch"] == 7
    assert run["train"]["best_eval_score"] == pytest.approx(0.81)

    _, imported = load_model(tmp_path / "run")
    torch.manual_seed(11)
    c = section["in_channels"]
    x = torch.randn(1, c, 24, 40) if section["name"] == "UNet2D" else torch.randn(1, c, 16, 32, 16)
    with torch.no_grad():
        ref = export_module(original, section)(x)
        out = export_module(imported, info.model_config)(x)
        ref_logits, out_logits = original(x), imported(x)
    assert ref.shape == out.shape
    assert ref_logits.abs().max() > 1e-3
    assert (ref_logits - out_logits).abs().max() == 0
    assert (ref - out).abs().max() == 0


def test_bare_state_dict_without_prefix_and_default_tile_from_yaml(tmp_path):
    original = _seed_model(MODEL_SECTION, seed=2)
    ckpt = tmp_path / "weights.pt"
    torch.save(original.state_dict(), ckpt)
    config = _write_yaml(tmp_path / "test.yaml", MODEL_SECTION, patch=(51, 96, 210))
    info = import_pytorch3dunet(ckpt, config, tmp_path / "run")
    # the YAML's test patch; the card rounds it up to the divisor (2**(3-1) = 4)
    assert info.model_config["default_tile"] == {"z": 51, "y": 96, "x": 210}
    assert card_fields(info.model_config)["default_tile"] == {"z": 52, "y": 96, "x": 212}
    assert info.train_config["name"] == "run"
    _, imported = load_model(info.folder)
    x = torch.randn(1, 1, 8, 16, 8)
    with torch.no_grad():
        assert torch.equal(imported(x), original(x))


def test_checkpoint_of_another_family_names_its_first_key(tmp_path):
    ckpt = tmp_path / "shine.pt"
    torch.save({"model_state_dict": build_blindspot({"name": "3x3_blind", "filter": 8}).state_dict()}, ckpt)
    config = _write_yaml(tmp_path / "test.yaml", MODEL_SECTION)
    with pytest.raises(CheckpointError, match=r"first key 'convolution_layer0_a\.0\.0\.weight' does not fit"):
        import_pytorch3dunet(ckpt, config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_yaml_key_is_named(tmp_path):
    ckpt = _write_seed_checkpoint(tmp_path / "c.pytorch", _seed_model(MODEL_SECTION))
    section = {k: v for k, v in MODEL_SECTION.items() if k != "out_channels"}
    with pytest.raises(ConfigError, match=r"model\.out_channels is missing"):
        import_pytorch3dunet(ckpt, _write_yaml(tmp_path / "a.yaml", section), tmp_path / "run")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"trainer": {}}))
    with pytest.raises(ConfigError, match="'model:' section is missing"):
        import_pytorch3dunet(ckpt, tmp_path / "b.yaml", tmp_path / "run")


def test_wrong_architecture_names_keys_and_shapes(tmp_path):
    ckpt = _write_seed_checkpoint(tmp_path / "c.pytorch", _seed_model(MODEL_SECTION))
    deeper = _write_yaml(tmp_path / "deeper.yaml", dict(MODEL_SECTION, num_levels=4))
    with pytest.raises(CheckpointError) as err:
        import_pytorch3dunet(ckpt, deeper, tmp_path / "run")
    msg = str(err.value)
    assert "Missing keys (12)" in msg and "encoders.3.basic_module.SingleConv1.conv.weight" in msg
    assert "num_levels" in msg
    three = _write_yaml(tmp_path / "three.yaml", dict(MODEL_SECTION, out_channels=3))
    with pytest.raises(CheckpointError, match=r"final_conv\.weight has shape \(2, 8, 1, 1, 1\) in the checkpoint "
                                              r"but \(3, 8, 1, 1, 1\)"):
        import_pytorch3dunet(ckpt, three, tmp_path / "run")
    groups = _write_yaml(tmp_path / "groups.yaml", dict(MODEL_SECTION, num_groups=3))
    with pytest.raises(ConfigError, match="num_groups"):
        import_pytorch3dunet(ckpt, groups, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_is_not_overwritten(tmp_path):
    ckpt = _write_seed_checkpoint(tmp_path / "c.pytorch", _seed_model(MODEL_SECTION))
    config = _write_yaml(tmp_path / "t.yaml", MODEL_SECTION)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        import_pytorch3dunet(ckpt, config, tmp_path / "run")
    assert (tmp_path / "run" / "keep.txt").read_text() == "x"
    with pytest.raises(CheckpointError, match="does not exist"):
        import_pytorch3dunet(tmp_path / "nope.pytorch", config, tmp_path / "run2")


def test_imported_segmentation_net_agrees_on_real_confocal_data(tmp_path, data_dir):
    """The ovule sample that pytorch-3dunet ships, normalized like its Normalize transform (global min-max -> [-1, 1])."""
    import h5py

    with h5py.File(data_dir / "ovule_3d_seg" / "pytorch3dunet_sample_patch.h5", "r") as f:
        raw = f["raw"][...].astype(np.float32)
    lo, hi = raw.min(), raw.max()
    x = np.clip(2 * (raw - lo) / (hi - lo) - 1, -1, 1)[24:40, 64:128, 64:128]
    x = torch.from_numpy(np.ascontiguousarray(x))[None, None]
    original = _seed_model(MODEL_SECTION, seed=5)
    ckpt = _write_seed_checkpoint(tmp_path / "best_checkpoint.pytorch", original)
    info = import_pytorch3dunet(ckpt, _write_yaml(tmp_path / "t.yaml", MODEL_SECTION), tmp_path / "run")
    _, imported = load_model(info.folder)
    with torch.no_grad():
        ref = export_module(original, MODEL_SECTION)(x)
        out = export_module(imported, info.model_config)(x)
    assert float(x.std()) > 0.01
    assert ref.shape == (1, 2, 16, 64, 64)
    assert float(ref.std()) > 1e-4  # the probabilities vary over the real structure
    assert (ref - out).abs().max() == 0
