"""Importing a checkpoint never runs pickled code unless the user passes --trust-checkpoint.

Each planted checkpoint holds one extra object whose ``__reduce__`` is ``(open, (marker, "w"))``: unpickling it
creates ``marker``. Refused imports must leave no marker and no run folder; with --trust-checkpoint the full
unpickler runs (the marker appears) and the import goes ahead. The seeds' harmless extras (numpy scalars,
``argparse.Namespace`` hyper-parameters) still import without the flag.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest
import torch

from scopert.errors import CheckpointError
from scopert.training.cnnt.importer import import_cnnt
from scopert.training.blindspot.importer import import_lightning_blindspot
from scopert.training.unet.importer import import_pytorch3dunet
from scopert.training.tagan.importer import import_tagan
from scopert.training.tagan import model as tagan
from scopert.training.common.runfolder import load_model, load_run_checkpoint
from tests.training.test_blindspot_import import _shine, _write_lightning_checkpoint
from tests.training.test_cnnt_import import SEED_JSON, _seed_files
from tests.training.test_unet_import import MODEL_SECTION, _seed_model, _write_seed_checkpoint, _write_yaml

SMALL_UNET = dict(MODEL_SECTION, f_maps=4, num_levels=2, num_groups=2)


class OpensAFile:
    """Unpickling this calls ``open(path, "w")``: the file appearing proves pickled code ran."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(path, marker, legacy: bool = False) -> None:
    """Add one OpensAFile entry to the dict saved in ``path`` (re-saved in the same format)."""
    data = torch.load(path, weights_only=False)
    data["zz_extra"] = OpensAFile(marker)
    torch.save(data, path, _use_new_zipfile_serialization=not legacy)


def _unet_files(tmp_path):
    ckpt = _write_seed_checkpoint(tmp_path / "best_checkpoint.pytorch", _seed_model(SMALL_UNET))
    return ckpt, _write_yaml(tmp_path / "test.yaml", SMALL_UNET, patch=(8, 16, 16))


def _import_unet(tmp_path, trust=False):
    return import_pytorch3dunet(tmp_path / "best_checkpoint.pytorch", tmp_path / "test.yaml", tmp_path / "run",
                                trust=trust)


def _blindspot_file(tmp_path):
    return _write_lightning_checkpoint(tmp_path / "epoch=3.ckpt", _shine({"name": "3x3_blind", "frame_num": 3,
                                                                            "filter": 8}))


def _tagan_file(tmp_path):
    torch.manual_seed(0)
    net = tagan.build_model({"role": "generator", "arch": "resnet_6blocks", "input_nc": 1, "output_nc": 1, "ngf": 4,
                             "norm": "batch", "use_dropout": False})
    path = tmp_path / "5_net_G.pth"
    torch.save(net.state_dict(), path)
    return path


def _cnnt_files(tmp_path):
    _, pt, js = _seed_files(tmp_path, SEED_JSON)
    return pt, js


FORMATS = {
    "unet": (lambda tp: _unet_files(tp)[0], lambda tp, trust: _import_unet(tp, trust)),
    "blindspot": (_blindspot_file,
                  lambda tp, trust: import_lightning_blindspot(tp / "epoch=3.ckpt", tp / "run", trust=trust)),
    "tagan": (_tagan_file, lambda tp, trust: import_tagan(tp / "5_net_G.pth", tp / "run", trust=trust)),
    "cnnt": (lambda tp: _cnnt_files(tp)[0],
             lambda tp, trust: import_cnnt(tp / "tiny__2024_epoch-30_best.pt", tp / "tiny__2024_epoch-30_best.json",
                                           tp / "run", trust=trust)),
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("family", sorted(FORMATS))
def test_planted_pickle_is_refused_and_writes_nothing(tmp_path, family, legacy):
    make, run_import = FORMATS[family]
    ckpt = make(tmp_path)
    marker = tmp_path / "pwned.txt"
    _plant(ckpt, marker, legacy)
    assert not marker.exists()

    with pytest.raises(CheckpointError, match=r"besides tensors \(io\.open\).*--trust-checkpoint") as err:
        run_import(tmp_path, False)
    assert str(ckpt) in str(err.value)
    assert not marker.exists(), "unpickling ran the planted code"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("family", sorted(FORMATS))
def test_trust_checkpoint_runs_the_full_unpickler_and_imports(tmp_path, family):
    make, run_import = FORMATS[family]
    ckpt = make(tmp_path)
    marker = tmp_path / "pwned.txt"
    _plant(ckpt, marker)
    if family in ("tagan", "cnnt"):
        # a raw state dict with a non-tensor entry: trusted loading goes ahead, and the entry is named
        with pytest.raises(CheckpointError, match="zz_extra"):
            run_import(tmp_path, True)
        assert marker.exists()
        return
    info = run_import(tmp_path, True)
    assert marker.exists(), "with --trust-checkpoint the full unpickler runs the file's code"
    _, model = load_model(info.folder)
    assert sum(p.numel() for p in model.parameters()) > 100


def test_trusted_unet_import_gives_the_original_outputs(tmp_path):
    ckpt, _ = _unet_files(tmp_path)
    original = _seed_model(SMALL_UNET)
    _plant(ckpt, tmp_path / "pwned.txt")
    info = _import_unet(tmp_path, trust=True)
    _, imported = load_model(info.folder)
    x = torch.randn(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = original(x), imported(x)
    assert ref.abs().mean() > 1e-3
    assert torch.equal(ref, out)


def test_cli_refuses_without_the_flag_and_imports_with_it(tmp_path):
    ckpt, yaml_path = _unet_files(tmp_path)
    marker = tmp_path / "pwned.txt"
    _plant(ckpt, marker)
    cmd = [sys.executable, "-m", "scopert", "import", "unet", str(ckpt), "--config", str(yaml_path),
           "-o", str(tmp_path / "run")]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr
    assert "--trust-checkpoint" in refused.stderr and "io.open" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()

    trusted = subprocess.run(cmd + ["--trust-checkpoint"], capture_output=True, text=True, timeout=300)
    assert trusted.returncode == 0, trusted.stderr
    assert marker.exists() and (tmp_path / "run" / "run.json").exists()


def test_seed_extras_import_without_the_flag(tmp_path, caplog):
    """numpy scalars (pytorch-3dunet's best_eval_score) and Lightning hyper-parameters as argparse.Namespace."""
    _unet_files(tmp_path)  # best_eval_score is np.float64(0.81)
    info = _import_unet(tmp_path)
    assert info.train_config["best_eval_score"] == pytest.approx(0.81)

    model = _shine({"name": "3x3_blind", "frame_num": 3, "filter": 8})
    ckpt = _write_lightning_checkpoint(tmp_path / "epoch=9.ckpt", model)
    data = torch.load(ckpt, weights_only=False)
    data["hparams_name"] = "args"
    data["hyper_parameters"] = {"args": argparse.Namespace(frame_num=3, lr=1e-3, model="3x3_blind")}
    data["callbacks"]["ModelCheckpoint{'monitor': 'val_loss'}"] = {"best_model_score": np.float32(0.12),
                                                                  "best_model_path": "epoch=9.ckpt"}
    torch.save(data, ckpt)
    info = import_lightning_blindspot(ckpt, tmp_path / "run_b")
    assert info.model_config["frame_num"] == 3
    assert "full unpickler" not in caplog.text


def test_namespace_is_allowed_only_where_the_format_holds_it(tmp_path):
    """A raw state dict (TA-GAN, CNNT) holds tensors only; a Namespace there is refused like any other object."""
    path = _tagan_file(tmp_path)
    state = torch.load(path, weights_only=True)
    state["opt"] = argparse.Namespace(ngf=4)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"argparse\.Namespace.*--trust-checkpoint"):
        import_tagan(path, tmp_path / "run")


def test_run_folder_checkpoint_with_planted_pickle_is_refused(tmp_path):
    """Export and resume read run folders through the same safe reader: no flag lets code run there."""
    _unet_files(tmp_path)
    info = _import_unet(tmp_path)
    marker = tmp_path / "pwned.txt"
    _plant(info.best_checkpoint, marker)
    with pytest.raises(CheckpointError, match="not written by ScopeRT or was altered"):
        load_model(info.folder)
    with pytest.raises(CheckpointError, match=r"io\.open"):
        load_run_checkpoint(info.best_checkpoint)
    assert not marker.exists()


def test_zip_bomb_is_refused_before_unpacking(tmp_path):
    """A checkpoint re-zipped with a deflated 256 MB member of zeros (about 250 KB on disk) is not inflated."""
    import zipfile

    path = _tagan_file(tmp_path)
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        prefix = src.namelist()[0].split("/")[0]
        dst.writestr(f"{prefix}/data/zeros", bytes(256 << 20))
    assert bomb.stat().st_size < (2 << 20)
    with pytest.raises(CheckpointError, match=r"declares \d+ bytes.*zip bomb"):
        import_tagan(bomb, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_torch_before_2_6_is_not_trusted_to_load_safely(tmp_path, monkeypatch):
    """weights_only loading could run code before torch 2.6 (CVE-2025-32434): such a torch needs the flag."""
    path = _tagan_file(tmp_path)
    monkeypatch.setattr(torch, "__version__", "2.4.1+cpu")
    with pytest.raises(CheckpointError, match=r"torch 2\.4\.1\+cpu cannot load .* CVE-2025-32434.*--trust-checkpoint"):
        import_tagan(path, tmp_path / "run")
    info = import_tagan(path, tmp_path / "run", trust=True)
    assert info.best_checkpoint.is_file()
