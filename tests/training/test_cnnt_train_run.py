"""``train_cnnt``: a tiny run on real frames writes a run folder; optimizer, clipping, scheduler and
fine-tuning follow the seed; bad configs are named."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
import torch

from scopert.errors import CheckpointError, ConfigError, InputError
from scopert.training.cnnt import model as cnnt
from scopert.training.common.runfolder import load_model, read_run_info
from scopert.training.cnnt.train import (
    CnntTrainer,
    PlateauOnMonitor,
    load_backbone,
    load_cnnt_config,
    train_cnnt,
    train_cnnt_with_result,
)

TINY = {"blocks": [8, 16], "blocks_per_set": 1, "n_head": 4, "time": 4, "height": [16, 24], "width": [16, 24],
        "with_mixer": False, "batch_size": 2, "num_epochs": 1, "steps_per_epoch": 2, "val_steps": 1,
        "im_value_scale": [0, 255], "seed": 1}


@pytest.fixture()
def h5_files(tmp_path, data_dir):
    stack = tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")[:6, 100:140, 200:260]
    rng = np.random.default_rng(0)
    noisy = np.clip(stack + rng.normal(0, 10, stack.shape), 0, 255).astype(np.float32)
    paths = []
    for name, cols in (("train.h5", slice(0, 40)), ("val.h5", slice(40, 60))):
        with h5py.File(tmp_path / name, "w") as fh:
            fh.create_dataset("m/noisy_im", data=noisy[:, :, cols])
            fh.create_dataset("m/clean_im", data=stack[:, :, cols].astype(np.float32))
        paths.append(str(tmp_path / name))
    return paths


def test_tiny_run_writes_folder_and_resumes(tmp_path, h5_files):
    cfg = {**TINY, "train_files": [h5_files[0]], "val_files": [h5_files[1]]}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    info, result = train_cnnt_with_result(tmp_path / "c.json", tmp_path / "run", progress=False)
    assert info.family == "cnnt" and info.model_config["height"] == 16 and info.model_config["time"] == 4
    assert result.last_epoch == 1 and result.monitor == "val_loss" and np.isfinite(result.best_loss)
    assert {"loss", "psnr", "val_loss", "val_psnr"} <= set(result.history[0])
    assert (tmp_path / "run" / "metrics.csv").exists() and (tmp_path / "run" / "loss.png").exists()
    assert read_run_info(tmp_path / "run").train_config["loss"] == ["mse", "ssim"]
    _, model = load_model(tmp_path / "run")
    assert isinstance(model, cnnt.CNNTEnhanced)
    # resuming a finished run with more epochs continues at epoch 2
    _, result2 = train_cnnt_with_result({**cfg, "num_epochs": 2}, tmp_path / "run", progress=False)
    assert result2.first_epoch == 2 and result2.last_epoch == 2


def test_optimizer_scheduler_and_clipping_follow_the_seed(tmp_path, h5_files, monkeypatch):
    seen = {}
    original = CnntTrainer.train_step

    def spy(self, batch):
        seen["opt"] = self.optimizer
        seen["sched"] = self.scheduler
        step = self.optimizer.step

        def checked_step(*a, **k):
            norms = [p.grad.norm() for p in self.model.parameters() if p.grad is not None]
            seen.setdefault("norms", []).append(float(torch.linalg.vector_norm(torch.stack(norms))))
            return step(*a, **k)

        self.optimizer.step = checked_step
        try:
            return original(self, batch)
        finally:
            self.optimizer.step = step

    monkeypatch.setattr(CnntTrainer, "train_step", spy)
    # a huge l1 weight makes raw gradients far larger than 1, so clipping must act
    train_cnnt({**TINY, "train_files": [h5_files[0]], "loss": ["l1"], "loss_weights": [1000.0]},
               tmp_path / "run", progress=False)
    group = seen["opt"].param_groups[0]
    assert isinstance(seen["opt"], torch.optim.AdamW)
    assert group["lr"] == 5e-4 and group["betas"] == (0.9, 0.95) and group["weight_decay"] == 0.1
    assert group["eps"] == 1e-8
    assert max(seen["norms"]) <= 1.0 + 1e-4
    plateau = seen["sched"].plateau
    assert isinstance(seen["sched"], PlateauOnMonitor)
    assert (plateau.mode, plateau.patience, plateau.factor, plateau.cooldown, plateau.min_lrs) == (
        "min", 5, 0.8, 2, [2e-6])


def test_plateau_steps_on_the_monitored_loss():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    values = iter([1.0] * 20)
    sched = PlateauOnMonitor(opt, lambda: next(values))
    lrs = []
    for _ in range(15):
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    # best at step 1, 5 bad epochs of patience, reduced at step 7; cooldown 2 + patience 5 -> next at step 15
    assert lrs[5] == pytest.approx(1e-3) and lrs[6] == pytest.approx(8e-4) and lrs[13] == pytest.approx(8e-4)
    assert lrs[14] == pytest.approx(6.4e-4)


def test_fine_tuning_loads_the_backbone(tmp_path, h5_files):
    base = {**TINY, "train_files": [h5_files[0]]}
    train_cnnt(base, tmp_path / "backbone", progress=False)
    _, backbone = load_model(tmp_path / "backbone")
    fresh = cnnt.build_model(read_run_info(tmp_path / "backbone").model_config)
    load_backbone(fresh, tmp_path / "backbone")
    for (k, a), b in zip(backbone.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    # a seed-style .pt with mask buffers loads too; weights that do not fit name the tensor and shapes
    state = dict(backbone.state_dict())
    for key in cnnt.seed_mask_keys(backbone):
        state[key] = torch.tril(torch.ones(8, 8)).view(1, 1, 8, 8)
    torch.save(state, tmp_path / "seed.pt")
    load_backbone(cnnt.build_model(read_run_info(tmp_path / "backbone").model_config), tmp_path / "seed.pt")
    with pytest.raises(CheckpointError, match=r"'cnnt\.down1\.input_proj\.conv2d\.weight'.*\(8, 32, 3, 3\).*"
                                              r"\(16, 32, 3, 3\)"):
        train_cnnt({**base, "blocks": [16, 32], "load_path": str(tmp_path / "seed.pt")}, tmp_path / "ft",
                   progress=False)


def test_bad_configs_are_named(tmp_path, h5_files):
    with pytest.raises(ConfigError, match="unknown key 'blocs'.*'blocks'"):
        load_cnnt_config({**TINY, "train_files": h5_files, "blocs": [8]})
    with pytest.raises(ConfigError, match="not divisible by 2"):
        load_cnnt_config({**TINY, "train_files": h5_files, "height": [17, 24]})
    with pytest.raises(ConfigError, match="layer norm ties the model to one patch size"):
        load_cnnt_config({**TINY, "train_files": h5_files, "norm_mode": "layer"})
    with pytest.raises(ConfigError, match="train_files is empty"):
        load_cnnt_config(TINY)
    with h5py.File(tmp_path / "bad.h5", "w") as fh:
        fh.create_dataset("cellA/noisy_im", data=np.zeros((4, 16, 16), np.float32))
    with pytest.raises(InputError, match="bad.h5:cellA has no 'clean_im'"):
        train_cnnt({**TINY, "train_files": [str(tmp_path / "bad.h5")]}, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "run.json").exists()
