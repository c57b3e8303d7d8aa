"""CNNT .pt + JSON import, proven by equal outputs of the imported run folder and the original model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from scopert.errors import CheckpointError, ConfigError
from scopert.training.cnnt.importer import import_cnnt
from scopert.training.cnnt import model as cnnt
from scopert.training.common.runfolder import load_model

SEED_JSON = {  # a subset of the seed's dict(config): architecture plus options the importer must ignore
    "blocks": [8, 16],
    "blocks_per_set": 1,
    "n_head": 4,
    "kernel_size": 3,
    "stride": 1,
    "padding": 1,
    "dropout_p": 0.1,
    "norm_mode": "instance",
    "with_mixer": 1,
    "use_conv_3D": False,
    "no_residual": False,
    "time": 4,
    "height": [32, 48],
    "width": [32, 48],
    "loss": ["mse", "ssim"],
    "loss_weights": [0.1, 1.0],
    "global_lr": 0.0005,
    "run_name": "tiny",
}


def _seed_files(tmp_path, seed_json: dict, seed: int = 0):
    """A random-weight model saved the way the seed saves it: state dict with mask buffers, plus JSON."""
    torch.manual_seed(seed)
    cfg = {k: v for k, v in seed_json.items() if k in cnnt.CnntConfig.__dataclass_fields__}
    model = cnnt.build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "bn1.weight", "bn2.weight")):
                p.add_(torch.randn_like(p) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    state = dict(model.state_dict())
    for key in cnnt.seed_mask_keys(model):
        state[key] = torch.tril(torch.ones(1000, 1000)).view(1, 1, 1000, 1000)
    pt = tmp_path / "tiny__2024_epoch-30_best.pt"
    torch.save(state, pt)
    js = tmp_path / "tiny__2024_epoch-30_best.json"
    js.write_text(json.dumps(seed_json))
    return model, pt, js


def _frames(data_dir, t: int = 4, size: int = 32) -> torch.Tensor:
    stack = tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")
    crop = stack[10 : 10 + t, 200 : 200 + size, 300 : 300 + size].astype(np.float32) / 255.0
    return torch.from_numpy(crop)[None, :, None]


@pytest.mark.parametrize("norm", ["instance", "layer", "batch"])
def test_import_gives_equal_outputs(tmp_path, data_dir, norm):
    model, pt, js = _seed_files(tmp_path, {**SEED_JSON, "norm_mode": norm})
    info = import_cnnt(pt, js, tmp_path / "run", name="tiny")
    assert info.family == "cnnt" and info.model_config["height"] == 32 and info.model_config["with_mixer"] is True
    assert info.source["format"] == "cnnt-pt" and info.train_config["seed_options"]["global_lr"] == 0.0005
    stored = torch.load(info.best_checkpoint, weights_only=True)["model_state_dict"]
    assert not any(k.endswith(".mask") for k in stored)
    _, imported = load_model(tmp_path / "run")
    x = _frames(data_dir)
    with torch.no_grad():
        want, got = model(x), imported(x)
    assert want.std() > 1e-3
    assert torch.equal(want, got)


def test_json_that_disagrees_names_tensor_and_shapes(tmp_path):
    _, pt, _ = _seed_files(tmp_path, SEED_JSON)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**SEED_JSON, "blocks": [8, 24]}))
    with pytest.raises(CheckpointError) as err:
        import_cnnt(pt, wrong, tmp_path / "run")
    msg = str(err.value)
    assert "'cnnt.up1.input_proj.conv2d.weight'" in msg and "(16, 8, 3, 3)" in msg and "(24, 8, 3, 3)" in msg
    assert not (tmp_path / "run" / "run.json").exists()
    deeper = tmp_path / "deeper.json"
    deeper.write_text(json.dumps({**SEED_JSON, "blocks": [8, 16, 24]}))
    with pytest.raises(CheckpointError, match="needs is missing"):
        import_cnnt(pt, deeper, tmp_path / "run")


def test_layer_norm_size_mismatch_is_named(tmp_path):
    _, pt, _ = _seed_files(tmp_path, {**SEED_JSON, "norm_mode": "layer"})
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**SEED_JSON, "norm_mode": "layer", "height": [64], "width": [64]}))
    with pytest.raises(CheckpointError, match=r"ln1\.weight.*\(8, 32, 32\).*\(8, 64, 64\)"):
        import_cnnt(pt, other, tmp_path / "run")


def test_other_family_and_bad_config_are_refused(tmp_path):
    _, _, js = _seed_files(tmp_path, SEED_JSON)
    torch.save({"model.1.weight": torch.zeros(8, 1, 7, 7), "model.2.weight": torch.zeros(8)}, tmp_path / "G.pth")
    with pytest.raises(CheckpointError, match="'model.1.weight'.*another family"):
        import_cnnt(tmp_path / "G.pth", js, tmp_path / "run")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**SEED_JSON, "norm_mode": "group"}))
    with pytest.raises(ConfigError, match="norm_mode 'group'"):
        import_cnnt(tmp_path / "G.pth", bad, tmp_path / "run")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        import_cnnt(tmp_path / "G.pth", tmp_path / "broken.json", tmp_path / "run")


def test_unsafe_or_truncated_checkpoints_are_refused(tmp_path):
    import argparse

    _, pt, js = _seed_files(tmp_path, SEED_JSON)
    torch.save({"config": argparse.Namespace(blocks=[8, 16]), "w": torch.zeros(2)}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="Python objects besides tensors.*Namespace"):
        import_cnnt(tmp_path / "pickled.pt", js, tmp_path / "run")
    data = pt.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        import_cnnt(tmp_path / "cut.pt", js, tmp_path / "run")
    assert not (tmp_path / "run").exists()
