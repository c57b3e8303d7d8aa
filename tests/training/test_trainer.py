"""The generic Trainer: it learns, keeps the best checkpoint, writes metrics.csv/loss.png, and resumes exactly."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from scopert.errors import OutputError
from scopert.training.rcan.losses import mae, mse, psnr
from scopert.training.common.runfolder import RunInfo, load_model, write_run_info
from scopert.training.common.trainer import Trainer, TrainSettings, keras_adam, staircase_decay


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine they made each step 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class LinearSource:
    """Batches of y = 3x - 1 on 8x8 images, from a seeded Generator (its state is checkpointed)."""

    def __init__(self, seed=0, fail_at=None):
        self.rng = np.random.default_rng(seed)
        self.calls = 0
        self.fail_at = fail_at

    def next_batch(self, batch_size):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        x = self.rng.random((batch_size, 1, 8, 8), dtype=np.float32)
        return x, 3 * x - 1

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


def _make(folder, epochs, source, lr=0.2, val=True):
    torch.manual_seed(0)
    model = nn.Conv2d(1, 1, 3, padding=1)
    opt = keras_adam(model.parameters(), lr)
    sched = staircase_decay(opt, epochs=8)
    val_batches = None
    if val:
        def val_batches():
            r = np.random.default_rng(123)
            for _ in range(2):
                x = r.random((2, 1, 8, 8), dtype=np.float32)
                yield x, 3 * x - 1
    settings = TrainSettings(epochs=epochs, steps_per_epoch=10, batch_size=4, progress=False, device="cpu")
    return Trainer(model, opt, mse, folder, source, settings, metrics={"psnr": psnr, "mae": mae},
                   val_batches=val_batches, scheduler=sched)


def _rows(folder):
    with open(folder / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_trainer_learns_and_writes_outputs(tmp_path):
    result = _make(tmp_path, 6, LinearSource()).fit()
    rows = _rows(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    losses = [float(r["val_loss"]) for r in rows]
    assert losses[-1] < 0.1 * losses[0]
    assert set(rows[0]) >= {"epoch", "lr", "loss", "psnr", "mae", "val_loss", "val_psnr", "val_mae", "seconds"}
    # The LR halves at nonzero multiples of epochs//4 = 2 (staircase_decay was given epochs=8).
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05, 0.05])
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert best["epoch"] == result.best_epoch and best["val_loss"] == pytest.approx(min(losses))
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert last["epoch"] == 6 and set(last) >= {"optimizer_state_dict", "scheduler_state_dict", "rng"}


def test_best_checkpoint_without_validation_follows_training_loss(tmp_path):
    result = _make(tmp_path, 3, LinearSource(), val=False).fit()
    rows = _rows(tmp_path)
    assert "val_loss" not in rows[0] and result.monitor == "loss"
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert best["val_loss"] == pytest.approx(min(float(r["loss"]) for r in rows))


def test_resume_after_interruption_continues_at_next_epoch(tmp_path):
    straight = tmp_path / "straight"
    _make(straight, 5, LinearSource()).fit()

    broken = tmp_path / "broken"
    # Interrupt in the middle of epoch 3 (call 25 of 10 steps per epoch).
    with pytest.raises(KeyboardInterrupt):
        _make(broken, 5, LinearSource(fail_at=25)).fit()
    assert [int(r["epoch"]) for r in _rows(broken)] == [1, 2]
    assert torch.load(broken / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 2

    result = _make(broken, 5, LinearSource(seed=999)).fit(resume=True)
    assert result.first_epoch == 3 and result.last_epoch == 5
    assert [int(r["epoch"]) for r in _rows(broken)] == [1, 2, 3, 4, 5]
    # The RNG, optimizer and scheduler states came back: the resumed run ends where the straight one did.
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)["model_state_dict"]
    b = torch.load(broken / "checkpoints" / "last.pt", weights_only=False)["model_state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert [r["lr"] for r in _rows(straight)] == [r["lr"] for r in _rows(broken)]


def test_extending_epochs_and_refusing_overwrite(tmp_path):
    _make(tmp_path, 2, LinearSource()).fit()
    assert _make(tmp_path, 4, LinearSource()).fit().first_epoch == 3
    assert len(_rows(tmp_path)) == 4
    with pytest.raises(OutputError, match="already holds a training run"):
        _make(tmp_path, 6, LinearSource()).fit(resume=False)


def test_time_limit_stops_early(tmp_path):
    trainer = _make(tmp_path, 50, LinearSource())
    trainer.settings.time_limit_minutes = 1e-9
    result = trainer.fit()
    assert result.stopped_by_time_limit and result.last_epoch == 1
    assert int(_rows(tmp_path)[0]["steps"]) == 1
    assert (tmp_path / "checkpoints" / "last.pt").exists()


def test_divergence_is_a_clear_error(tmp_path):
    class NanSource(LinearSource):
        def next_batch(self, batch_size):
            x, y = super().next_batch(batch_size)
            return x, y * np.nan

    from scopert.errors import RunError

    with pytest.raises(RunError, match="diverged.*epoch 1, step 1"):
        _make(tmp_path, 2, NanSource()).fit()


def test_best_checkpoint_loads_through_the_run_folder(tmp_path):
    """The trainer's best.pt is what runfolder.load_model reads (the rcan family builds the model)."""
    cfg = {"ndim": 2, "num_channels": 4, "num_residual_blocks": 1, "num_residual_groups": 1,
           "channel_reduction": 2, "residual_scaling": 1.0, "num_input_channels": 1, "num_output_channels": 1,
           "input_shape": [8, 8]}
    from scopert.training.common.registry import get_family

    write_run_info(RunInfo(tmp_path, "rcan", cfg))
    model = get_family("rcan").build_model(cfg)
    opt = keras_adam(model.parameters(), 1e-3)
    settings = TrainSettings(epochs=1, steps_per_epoch=2, batch_size=2, progress=False, device="cpu")
    Trainer(model, opt, mae, tmp_path, LinearSource(), settings).fit()
    _, loaded = load_model(tmp_path)
    x = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert json.loads((tmp_path / "run.json").read_text())["family"] == "rcan"


def _tiny_rcan_config(tmp_path, rng, shapes=((24, 40), (30, 28))):
    for name in ("raw", "gt"):
        (tmp_path / name).mkdir(exist_ok=True)
    for i, shape in enumerate(shapes):
        gt = rng.random(shape).astype(np.float32)
        import tifffile

        tifffile.imwrite(tmp_path / "gt" / f"{i}.tif", gt)
        tifffile.imwrite(tmp_path / "raw" / f"{i}.tif", gt + 0.3 * rng.standard_normal(shape).astype(np.float32))
    return {
        "training_data_dir": {"raw": str(tmp_path / "raw"), "gt": str(tmp_path / "gt")},
        "validation_image_pairs": [{"raw": str(tmp_path / "raw" / "0.tif"), "gt": str(tmp_path / "gt" / "0.tif")}],
        "epochs": 2, "steps_per_epoch": 3, "num_channels": 4, "num_residual_blocks": 1,
        "num_residual_groups": 2, "channel_reduction": 2, "batch_size": 2, "seed": 3,
        "intensity_threshold": 0.1, "area_ratio_threshold": 0.2, "metrics": ["psnr", "ssim"],
    }


def test_train_rcan_writes_run_folder_and_resumes(tmp_path, caplog):
    import logging

    from scopert.training.common.runfolder import read_run_info
    from scopert.training.rcan.train import train_rcan, train_rcan_with_result

    cfg = _tiny_rcan_config(tmp_path, np.random.default_rng(0))
    from scopert.errors import ConfigError

    # The clipped patch is not square, which rotate_and_flip refuses (as the seed does) before writing anything.
    with pytest.raises(ConfigError, match="square YX patch, got \\[24, 28\\]"):
        train_rcan(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "run.json").exists()
    cfg["data_augmentation"] = False
    with caplog.at_level(logging.WARNING, logger="scopert.training.rcan.data"):
        info = train_rcan(cfg, tmp_path / "run", progress=False, device="cpu")
    # The default 2D patch (256, 256) is clipped to the smallest image extent per axis: min(24, 30), min(40, 28).
    assert "clipped to [24, 28]" in caplog.text
    stored = read_run_info(tmp_path / "run")
    assert stored.family == "rcan" and stored.model_config == info.model_config
    assert stored.model_config["ndim"] == 2 and stored.model_config["input_shape"] == [24, 28]
    assert stored.train_config["seed"] == 3 and stored.train_config["epochs"] == 2
    rows = _rows(tmp_path / "run")
    assert [int(r["epoch"]) for r in rows] == [1, 2] and "val_ssim" in rows[0]
    _, model = load_model(tmp_path / "run")
    assert model(torch.rand(1, 1, 24, 28)).shape == (1, 1, 24, 28)

    _, result = train_rcan_with_result(cfg | {"epochs": 3}, tmp_path / "run", progress=False, device="cpu")
    assert (result.first_epoch, result.last_epoch) == (3, 3)
    with pytest.raises(OutputError, match="already holds"):
        train_rcan(cfg, tmp_path / "run", resume=False, progress=False)
    with pytest.raises(ConfigError, match="model config"):
        train_rcan(cfg | {"num_channels": 8}, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="ssim metric needs"):
        train_rcan(cfg | {"input_shape": [8, 8]}, tmp_path / "run2", progress=False)
