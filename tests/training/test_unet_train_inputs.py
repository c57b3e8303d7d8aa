"""`scopert train unet`: the seed's YAML shape, bad inputs named clearly, labels, losses and metrics with numbers."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import yaml

from scopert.errors import ConfigError, InputError
from scopert.training.unet.train import train_unet_with_result
from scopert.training.unet.config import load_unet_config
from scopert.training.unet.data import slice_grid
from scopert.training.unet.losses import LOSS_NAMES, build_loss, build_metric, mean_iou
from scopert.training.unet.transforms import boundary_from_instances, normalize_raw

OVULE = "ovule_3d_seg/pytorch3dunet_sample_patch.h5"


def ovule_crop(data_dir, z=(0, 16), y=(0, 64), x=(0, 64)):
    with h5py.File(data_dir / OVULE, "r") as f:
        raw = f["raw"][z[0]:z[1], y[0]:y[1], x[0]:x[1]]
        label = f["label"][z[0]:z[1], y[0]:y[1], x[0]:x[1]]
    return raw, label


def write_h5(path, raw, label, weight=None):
    with h5py.File(path, "w") as f:
        f["raw"] = raw
        f["label"] = label
        if weight is not None:
            f["weight"] = weight
    return path


def seed_config(train_file, val_file, **over):
    """A config in the shape of pytorch-3dunet's train_config*.yaml (only paths and sizes changed)."""
    cfg = {
        "manual_seed": 0,
        "model": {"name": "UNet3D", "in_channels": 1, "out_channels": 1, "layer_order": "gcr", "f_maps": 4,
                  "num_groups": 2, "num_levels": 2, "final_sigmoid": True, "is_segmentation": True},
        "trainer": {"checkpoint_dir": "3dunet", "resume": None, "validate_after_iters": 2, "log_after_iters": 2,
                    "epochs": 10, "iters": 4, "eval_score_higher_is_better": True},
        "optimizer": {"learning_rate": 0.001, "weight_decay": 0.00001},
        "loss": {"name": "BCEDiceLoss", "alpha": 1.0, "beta": 1.0},
        "eval_metric": {"name": "MeanIoU"},
        "lr_scheduler": {"name": "ReduceLROnPlateau", "mode": "max", "factor": 0.5, "patience": 3},
        "loaders": {
            "dataset": "StandardHDF5Dataset", "batch_size": 2, "num_workers": 4,
            "raw_internal_path": "raw", "label_internal_path": "label",
            "train": {"file_paths": [str(train_file)],
                      "slice_builder": {"name": "SliceBuilder", "patch_shape": [8, 32, 32], "stride_shape": [8, 16, 16]},
                      "transformer": {
                          "raw": [{"name": "Normalize"}, {"name": "RandomFlip"}, {"name": "RandomRotate90"},
                                  {"name": "ElasticDeformation", "spline_order": 3},
                                  {"name": "AdditiveGaussianNoise", "execution_probability": 0.2},
                                  {"name": "ToTensor", "expand_dims": True}],
                          "label": [{"name": "RandomFlip"}, {"name": "RandomRotate90"},
                                    {"name": "StandardLabelToBoundary"}, {"name": "ToTensor", "expand_dims": True}]}},
            "val": {"file_paths": [str(val_file)],
                    "slice_builder": {"name": "SliceBuilder", "patch_shape": [8, 32, 32], "stride_shape": [8, 32, 32]},
                    "transformer": {"raw": [{"name": "Normalize"}, {"name": "ToTensor", "expand_dims": True}],
                                    "label": [{"name": "StandardLabelToBoundary"},
                                              {"name": "ToTensor", "expand_dims": True}]}},
        },
    }
    for dotted, value in over.items():
        node = cfg
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return cfg


@pytest.fixture()
def ovule_files(tmp_path, data_dir):
    raw, label = ovule_crop(data_dir)
    train = write_h5(tmp_path / "train.h5", raw[:8], label[:8])
    val = write_h5(tmp_path / "val.h5", raw[8:], label[8:])
    return train, val


def write_yaml(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---- bad input ------------------------------------------------------------------------------------------------


def test_label_shape_differs_from_raw_names_both_shapes_and_the_file(tmp_path, data_dir):
    raw, label = ovule_crop(data_dir)
    bad = write_h5(tmp_path / "bad_label.h5", raw[:8], label[:8, :60, :64])
    good = write_h5(tmp_path / "val.h5", raw[8:], label[8:])
    cfg = write_yaml(tmp_path / "c.yaml", seed_config(bad, good))
    with pytest.raises(InputError) as err:
        train_unet_with_result(cfg, tmp_path / "run", progress=False)
    msg = str(err.value)
    assert "bad_label.h5" in msg and "(8, 60, 64)" in msg and "(8, 64, 64)" in msg
    assert not (tmp_path / "run").exists(), "nothing may be written before the inputs are checked"


@pytest.mark.parametrize("dotted, named", [
    ("loss", "'loss'"),
    ("loaders__train__slice_builder__patch_shape", "loaders.train.slice_builder.patch_shape"),
    ("loaders__train", "loaders.train"),
    ("model__in_channels", "model.in_channels"),
])
def test_a_missing_yaml_key_is_named(tmp_path, ovule_files, dotted, named):
    cfg = write_yaml(tmp_path / "c.yaml", seed_config(*ovule_files, **{dotted: None}))
    with pytest.raises(ConfigError) as err:
        train_unet_with_result(cfg, tmp_path / "run", progress=False)
    assert named in str(err.value)
    assert not (tmp_path / "run").exists()


def test_an_unknown_loss_and_an_unknown_key_are_named(tmp_path, ovule_files):
    cfg = write_yaml(tmp_path / "c.yaml", seed_config(*ovule_files, loss={"name": "FocalLoss"}))
    with pytest.raises(ConfigError) as err:
        train_unet_with_result(cfg, tmp_path / "run", progress=False)
    assert "FocalLoss" in str(err.value) and "BCEDiceLoss" in str(err.value)
    cfg = write_yaml(tmp_path / "c2.yaml", seed_config(*ovule_files, trainer__validate_every=3))
    with pytest.raises(ConfigError) as err:
        load_unet_config(cfg)
    assert "trainer.'validate_every'" in str(err.value) or "validate_every" in str(err.value)
    cfg = write_yaml(tmp_path / "c3.yaml", seed_config(*ovule_files, loss={"name": "DiceLoss", "gamma": 2}))
    with pytest.raises(ConfigError, match="gamma"):
        train_unet_with_result(cfg, tmp_path / "run", progress=False)


def test_cli_reports_the_unknown_loss_without_a_traceback(tmp_path, ovule_files):
    cfg = write_yaml(tmp_path / "c.yaml", seed_config(*ovule_files, loss={"name": "HingeLoss"}))
    res = subprocess.run([sys.executable, "-m", "scopert", "train", "unet", "-c", str(cfg), "-o",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "HingeLoss" in res.stderr and "Traceback" not in res.stderr


def test_a_patch_bigger_than_the_volume_is_refused():
    with pytest.raises(InputError, match="smaller than the patch"):
        slice_grid((8, 64, 64), (16, 32, 32), (8, 16, 16), "v.h5")


# ---- data: grid, labels, normalization --------------------------------------------------------------------------


def test_slice_grid_matches_the_seed_rule():
    grid = slice_grid((10, 100, 50), (4, 64, 50), (3, 32, 50))
    zs = sorted({g[0].start for g in grid})
    ys = sorted({g[1].start for g in grid})
    assert zs == [0, 3, 6] and ys == [0, 32, 36]  # range(0, I-k+1, s) plus I-k
    assert len(grid) == 3 * 3 * 1


def test_boundaries_from_real_instance_labels(data_dir):
    _, label = ovule_crop(data_dir, z=(0, 16), y=(0, 96), x=(0, 96))
    boundary = boundary_from_instances(label)
    # a voxel is boundary exactly when one of its 6 neighbours has another id
    changed = np.zeros(label.shape, bool)
    for ax in range(3):
        d = np.diff(label, axis=ax) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        changed[tuple(lo)] |= d
        changed[tuple(hi)] |= d
    assert np.array_equal(boundary.astype(bool), changed)
    frac = boundary.mean()
    assert 0.05 < frac < 0.6, frac
    interior_ids = np.unique(label[boundary == 0])
    assert len(interior_ids) > 5


def test_normalize_is_global_min_max_to_minus_one_one(data_dir):
    raw, _ = ovule_crop(data_dir)
    out = normalize_raw(raw[None], {"name": "Normalize"})
    assert out.min() == -1.0 and out.max() == 1.0
    lo, hi = float(raw.min()), float(raw.max())
    v = raw[3, 10, 10]
    assert out[0, 3, 10, 10] == pytest.approx(2 * (v - lo) / (hi - lo) - 1, abs=1e-6)


# ---- losses and metrics -------------------------------------------------------------------------------------------


def test_every_loss_gives_a_finite_gradient_and_prefers_the_right_answer():
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 4, 8, 8) > 0.5).float()
    weight = torch.rand(2, 1, 4, 8, 8) + 0.5
    for name in LOSS_NAMES:
        two = name in ("CrossEntropyLoss", "PixelWiseCrossEntropyLoss")
        good = (torch.cat([1 - target, target], 1) if two else target) * 8 - 4
        bad = -good
        fn = build_loss({"name": name}, final_sigmoid=not two)
        good_loss, bad_loss = fn(good, target, weight), fn(bad, target, weight)
        assert torch.isfinite(good_loss) and good_loss < bad_loss, name
        x = bad.clone().requires_grad_(True)
        fn(x, target, weight).backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, name


def test_pixelwise_cross_entropy_is_the_weighted_mean_of_log_softmax():
    torch.manual_seed(1)
    pred = torch.randn(1, 3, 2, 4, 4)
    target = torch.randint(0, 3, (1, 1, 2, 4, 4)).float()
    weight = torch.rand(1, 1, 2, 4, 4)
    got = build_loss({"name": "PixelWiseCrossEntropyLoss"}, final_sigmoid=False)(pred, target, weight)
    logp = torch.log_softmax(pred, 1).gather(1, target.long())
    expected = -(weight * logp).sum() / pred.numel()  # mean over B*C*voxels, as the seed's mean of the product
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mean_iou_and_dice_numbers():
    target = torch.zeros(1, 1, 1, 4, 4)
    target[..., :2, :] = 1  # 8 foreground pixels
    pred = torch.full((1, 1, 1, 4, 4), -10.0)
    pred[..., :1, :] = 10  # predicts 4 of them
    assert mean_iou(pred, target).item() == pytest.approx(0.5)
    dice = build_metric({"name": "DiceCoefficient"}, True)(pred, target).item()
    assert dice == pytest.approx(2 * 4 / (4 + 8), abs=1e-3)
    psnr = build_metric({"name": "PSNR"}, True)(torch.zeros(1, 1, 4), torch.tensor([[[0.0, 1.0, 0.0, 0.0]]]))
    assert psnr.item() == pytest.approx(10 * np.log10(1 / 0.25), abs=1e-4)


# ---- a tiny real run ----------------------------------------------------------------------------------------------


def test_a_tiny_run_on_ovule_writes_the_run_folder_and_resumes(tmp_path, ovule_files):
    cfg = write_yaml(tmp_path / "c.yaml", seed_config(*ovule_files))
    info, result = train_unet_with_result(cfg, tmp_path / "run", progress=False)
    assert info.family == "unet" and info.model_config["name"] == "UNet3D"
    assert result.last_epoch == 2 and len(result.history) == 2  # iters 4 / validate_after_iters 2
    row = result.history[-1]
    assert 0.0 <= row["val_eval_score"] <= 1.0 and np.isfinite(row["val_loss"])
    assert row["val_objective"] == pytest.approx(-row["val_eval_score"])
    assert info.best_checkpoint.exists() and info.last_checkpoint.exists()
    assert "ElasticDeformation" in info.train_config["skipped_augmentations"]
    # the same folder with more iterations resumes after the last validation
    cfg2 = write_yaml(tmp_path / "c2.yaml", seed_config(*ovule_files, trainer__iters=6))
    _, again = train_unet_with_result(cfg2, tmp_path / "run", progress=False)
    assert again.first_epoch == 3 and again.last_epoch == 3


def test_pixelwise_cross_entropy_trains_with_a_weight_map_and_refuses_without(tmp_path, data_dir):
    raw, label = ovule_crop(data_dir)
    boundary = boundary_from_instances(label)
    weight = (1.0 + 4.0 * boundary).astype(np.float32)  # boundary voxels weigh 5x
    train = write_h5(tmp_path / "train.h5", raw[:8], boundary[:8].astype(np.int64), weight[:8])
    val = write_h5(tmp_path / "val.h5", raw[8:], boundary[8:].astype(np.int64), weight[8:])
    over = dict(model__out_channels=2, model__final_sigmoid=False, loss={"name": "PixelWiseCrossEntropyLoss"})
    cfg = seed_config(train, val, **over)
    for phase in ("train", "val"):
        cfg["loaders"][phase]["transformer"]["label"] = [{"name": "ToTensor", "expand_dims": True}]
    with pytest.raises(ConfigError, match="weight_internal_path"):
        train_unet_with_result(write_yaml(tmp_path / "a.yaml", cfg), tmp_path / "run_a", progress=False)
    cfg["loaders"]["weight_internal_path"] = "weight"
    cfg["loaders"]["train"]["slice_builder"]["name"] = "PixelWiseWeightedSliceBuilder"
    _, result = train_unet_with_result(write_yaml(tmp_path / "b.yaml", cfg), tmp_path / "run_b", progress=False)
    assert result.last_epoch == 2 and all(np.isfinite(r["val_loss"]) for r in result.history)
    assert 0.0 < result.history[-1]["val_eval_score"] <= 1.0
