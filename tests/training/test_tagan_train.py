"""TA-GAN training: the seed's losses, init, LR rule and update order; datasets, run folders, resume, bad input.

Small nets (ngf 4) on crops of the real stardist nuclei image, so each test takes a few seconds.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from scopert.errors import ConfigError, InputError
from scopert.training.tagan import train as tt
from scopert.training.common.runfolder import load_model
from scopert.training.tagan.config import load_tagan_config
from scopert.training.tagan.data import (
    CropSampler,
    StackLayout,
    degrade,
    load_modality_folders,
    load_stack_folder,
    otsu_threshold,
    scale_image,
    scale_seg,
)
from scopert.training.tagan.losses import discriminator_loss, init_weights_normal, linear_lr_lambda
from scopert.training.tagan import model as tagan


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """2 shared cores: one intra-op thread avoids OpenMP oversubscription when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def nuclei(data_dir):
    img = tifffile.imread(data_dir / "stardist_nuclei_2d" / "stardist_dsb2018_img2d.tif")
    mask = tifffile.imread(data_dir / "stardist_nuclei_2d" / "stardist_dsb2018_mask2d.tif")
    return img, mask


def _write_stacks(folder, nuclei, n=2, size=96):
    img, mask = nuclei
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        sl = np.s_[i * size:(i + 1) * size, 100:100 + size]
        stack = np.stack([degrade(img[sl], rng), img[sl].astype(np.float32), (mask[sl] > 0).astype(np.float32)])
        tifffile.imwrite(folder / f"im{i}.tif", stack, photometric="minisblack")


def _tiny(root, **over):
    cfg = {"dataroot": str(root), "ngf": 4, "ndf": 4, "batch_size": 2, "crop_size": 32, "niter": 2,
           "niter_decay": 1, "steps_per_epoch": 2, "seed": 3}
    cfg.update(over)
    return cfg


def test_linear_lr_rule_is_the_seeds():
    rule = linear_lr_lambda(niter=3, niter_decay=2, epoch_count=1)
    assert [rule(e) for e in range(5)] == pytest.approx([1, 1, 1, 2 / 3, 1 / 3])
    assert linear_lr_lambda(3, 2, epoch_count=2)(0) == pytest.approx(1.0)
    assert linear_lr_lambda(3, 2, epoch_count=2)(3) == pytest.approx(1 / 3)


def test_init_normal_002_and_bn_around_one():
    torch.manual_seed(0)
    g = init_weights_normal(tagan.build_model({"ngf": 16}), 0.02)
    convs = [m for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    w = torch.cat([m.weight.detach().flatten() for m in convs])
    assert abs(float(w.std()) - 0.02) < 0.001 and abs(float(w.mean())) < 0.001
    assert all(float(m.bias.detach().abs().max()) == 0 for m in convs if m.bias is not None)
    bn = torch.cat([m.weight.detach() for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(float(bn.mean()) - 1.0) < 0.005 and 0.015 < float(bn.std()) < 0.025


def test_discriminator_loss_is_conditional_and_halved():
    seen = []

    def fake_d(pair):
        seen.append(pair.shape[1])
        return torch.zeros(pair.shape[0], 1, 4, 4)  # logit 0: BCE = ln 2 for either target

    x, y = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    loss = discriminator_loss(fake_d, x, y, y, lambda_gan=3.0)
    assert float(loss) == pytest.approx(3.0 * math.log(2), rel=1e-6)
    assert seen == [2, 2]  # D sees [condition, image]


def test_update_order_and_losses(tmp_path, nuclei, monkeypatch):
    _write_stacks(tmp_path / "d" / "train", nuclei)
    order = []

    class Recording(tt.GanOptimizers):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            for name, opt in self.optimizers.items():
                opt.register_step_pre_hook(lambda *_, _n=name: order.append(_n))

    monkeypatch.setattr(tt, "GanOptimizers", Recording)
    info, result = tt.train_tagan_with_result(_tiny(tmp_path / "d", niter=1, niter_decay=0, steps_per_epoch=2,
                                                    lambda_pixel=50.0), tmp_path / "run", progress=False)
    assert order == ["D", "G", "S", "D", "G", "S"]
    row = result.history[0]
    assert row["loss"] == pytest.approx(row["loss_G_GAN"] + row["loss_G_seg"] + row["loss_pixel"], rel=1e-5)
    assert row["loss_G_seg"] > 0 and row["loss_S"] > 0 and row["loss_D"] > 0


def test_run_folder_layout_lr_decay_and_resume(tmp_path, nuclei):
    _write_stacks(tmp_path / "d" / "train", nuclei)
    cfg = _tiny(tmp_path / "d")
    info, result = tt.train_tagan_with_result(cfg, tmp_path / "run", progress=False)
    assert [r["lr"] for r in result.history] == pytest.approx([2e-4, 2e-4, 1e-4])
    g_info, g = load_model(tmp_path / "run")
    s_info, s = load_model(tmp_path / "run" / "segmentor")
    assert g_info.model_config["role"] == "generator" and s_info.model_config["role"] == "segmentor"
    assert sum(p.numel() for p in g.parameters()) != sum(p.numel() for p in s.parameters())
    diff = info.train_config["inference_mode_difference"]
    assert diff["n_crops"] == 2 and diff["mean_abs"] > 0  # no valid/: centre crops of the training images
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert set(last["optimizer_state_dict"]["nets"]) == {"D", "S"}

    # resume with one more decay epoch: continues at epoch 4, with D and S restored from last.pt
    cfg2 = dict(cfg, niter_decay=2)
    _, result2 = tt.train_tagan_with_result(cfg2, tmp_path / "run", progress=False)
    assert [int(r["epoch"]) for r in result2.history] == [1, 2, 3, 4]
    with open(tmp_path / "run" / "metrics.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    with pytest.raises(ConfigError, match="generator config"):
        tt.train_tagan_with_result(dict(cfg2, ngf=8), tmp_path / "run", progress=False)


def test_stack_with_too_few_channels_names_the_layout(tmp_path, nuclei):
    (tmp_path / "train").mkdir()
    img = nuclei[0][:64, :64]
    tifffile.imwrite(tmp_path / "train" / "two.tif", np.stack([img, img]))
    with pytest.raises(InputError, match=r"2 channel\(s\).*needs 3: \[input, target, seg\]"):
        load_stack_folder(tmp_path / "train", StackLayout(1, 1, 1))
    tifffile.imwrite(tmp_path / "train" / "two.tif", np.stack([img, img, img]), photometric="minisblack")
    with pytest.raises(InputError, match=r"needs 4: \[input, target, seg1, seg2\]"):
        tt.train_tagan_with_result({"dataroot": str(tmp_path), "dataset_mode": "dendrites", "ngf": 4,
                                    "crop_size": 32}, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_folder_per_modality_dataset(tmp_path, nuclei):
    img, mask = nuclei
    for sub in ("BF", "SIM", "masks"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    for i in range(2):
        tifffile.imwrite(tmp_path / "train" / "BF" / f"f{i}.tif", img[:64, i * 64:(i + 1) * 64] // 2)
        tifffile.imwrite(tmp_path / "train" / "SIM" / f"f{i}.tif", img[:64, i * 64:(i + 1) * 64])
        tifffile.imwrite(tmp_path / "train" / "masks" / f"f{i}.tif", mask[:64, i * 64:(i + 1) * 64])
    dirs = {"input": "BF", "target": "SIM", "seg": "masks"}
    images = load_modality_folders(tmp_path / "train", StackLayout(), dirs)
    assert [im.name for im in images] == ["f0", "f1"]
    assert images[0].input.min() == -1 and images[0].input.max() == pytest.approx(1, abs=1e-6)
    assert set(np.unique(images[0].seg)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(images[1].seg[0] > 0, mask[:64, 64:128] > 0)
    x, (y, s) = CropSampler(images, 32, seed=0).next_batch(3)
    assert x.shape == y.shape == s.shape == (3, 1, 32, 32)
    tifffile.imwrite(tmp_path / "train" / "BF" / "extra.tif", img[:64, :64])
    with pytest.raises(InputError, match="extra.tif is in BF/ but not in every modality folder"):
        load_modality_folders(tmp_path / "train", StackLayout(), dirs)
    with pytest.raises(InputError, match="no input/ sub-folder"):
        load_modality_folders(tmp_path / "train", StackLayout())


def test_scaling_default_and_seed_8bit_compat():
    a = np.array([[0, 100, 255, 1000]], np.uint16)
    np.testing.assert_allclose(scale_image(a, compat_8bit=True), [[-1, 100 / 127.5 - 1, 1, 1]], atol=1e-6)
    np.testing.assert_allclose(scale_image(a), [[-1, 200 / 1000 - 1, 510 / 1000 - 1, 1]], atol=1e-6)
    f = np.array([[-5.0, 12.7, 300.0]], np.float32)
    np.testing.assert_allclose(scale_image(f, True), [[-1, 12 / 127.5 - 1, 1]], atol=1e-6)  # PIL truncates
    np.testing.assert_array_equal(scale_seg(np.array([0, 3, 32768])), [-1, 1, 1])
    # the compat mode is recorded in G's and S's model config, so their cards carry the seed's fixed 8-bit map
    configs = tt.model_configs(load_tagan_config({"dataroot": "x", "compat_8bit": True}))
    for role in ("G", "S"):
        norm = tagan.card_fields(configs[role])["normalization"]
        assert norm == {"kind": "fixed", "offset": 127.5, "scale": 127.5, "clip": True, "symmetric": True}
    default = tt.model_configs(load_tagan_config({"dataroot": "x"}))["G"]
    assert tagan.card_fields(default)["normalization"]["kind"] == "minmax"
    rng = np.random.default_rng(0)
    assert 3.5 < otsu_threshold(np.r_[rng.normal(0, 2, 5000), rng.normal(10, 2, 5000)]) < 6.5


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="'dataroot' is required"):
        load_tagan_config({})
    with pytest.raises(ConfigError, match="Did you mean 'lambda_seg'"):
        load_tagan_config({"dataroot": "x", "lambda_segm": 1})
    with pytest.raises(ConfigError, match="netG is 'resnet_7blocks'"):
        load_tagan_config({"dataroot": "x", "netG": "resnet_7blocks"})
    assert load_tagan_config({"dataroot": "x", "dataset_mode": "dendrites"}).seg_nc == 2
    (tmp_path / "train").mkdir()
    tifffile.imwrite(tmp_path / "train" / "a.tif", np.zeros((3, 256, 256), np.uint8), photometric="minisblack")
    with pytest.raises(ConfigError, match="crop_size 64 is not a multiple of 128"):
        tt.train_tagan_with_result({"dataroot": str(tmp_path), "netS": "unet_128", "crop_size": 64, "ngf": 4},
                                   tmp_path / "run", progress=False)
