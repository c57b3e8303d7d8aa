"""`train_blindspot` end to end at a tiny size on real EM frames: a run folder with checkpoints and metrics, an exact
resume, validation on held-out frames, and the refusal of a folder with fewer frames than frame_num."""

from __future__ import annotations

import csv
import json

import pytest
import tifffile
import torch

from scopert.errors import ConfigError, InputError
from scopert.training.blindspot.train import train_blindspot, train_blindspot_with_result


def _config(data, **kw):
    cfg = {"data_path": str(data), "model": "3x3_blind", "frame_num": 3, "filter": 8, "img_size": 32,
           "batch_size": 1, "steps_per_epoch": 2, "max_epochs": 2, "resize": None, "val_frames": 1,
           "learning_rate": 1e-3, "seed": 3}
    cfg.update(kw)
    return cfg


@pytest.fixture()
def em_frames(data_dir, tmp_path):
    """Five consecutive ISBI ssTEM sections (neighbouring slices of one volume), 64 x 64 crops, one file each."""
    stack = tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif", key=range(5))[:, :64, :64]
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(stack):
        tifffile.imwrite(folder / f"sec{i:02d}.tif", f)
    return folder


@pytest.mark.slow
def test_trains_validates_and_resumes_exactly(em_frames, tmp_path):
    info, result = train_blindspot_with_result(_config(em_frames), tmp_path / "a", progress=False)
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["family"] == "blindspot" and run["model"]["frame_num"] == 3 and run["train"]["n_frames"] == 5
    rows = list(csv.DictReader(open(tmp_path / "a" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(float(r["val_loss"]) > 0 for r in rows)
    assert result.monitor == "val_loss" and info.best_checkpoint.exists()

    # One epoch, then resume for the second: the same weights as the uninterrupted run.
    train_blindspot(_config(em_frames, max_epochs=1), tmp_path / "b", progress=False)
    train_blindspot(_config(em_frames), tmp_path / "b", progress=False)
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)["model_state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)["model_state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fewer_frames_than_frame_num_is_refused_before_writing(em_frames, tmp_path):
    with pytest.raises(InputError, match="5 frames, fewer than frame_num = 7"):
        train_blindspot(_config(em_frames, frame_num=7), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_bad_architecture_and_other_family_folder_are_refused(em_frames, tmp_path):
    with pytest.raises(ConfigError, match="4x4_blind"):
        train_blindspot(_config(em_frames, model="4x4_blind"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="filter 6 is not a multiple of 4"):
        train_blindspot(_config(em_frames, filter=6), tmp_path / "run", progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "run.json").write_text(json.dumps({"family": "unet", "model": {}}))
    with pytest.raises(ConfigError, match="not a blindspot run"):
        train_blindspot(_config(em_frames), tmp_path / "other", progress=False)
