"""The seed families as their users bring them: small networks imported from checkpoints written in each original
repository's own format (Keras .hdf5, pytorch-3dunet .pytorch, CNNT .pt + .json, Lightning .ckpt, TA-GAN .pth),
then exported by ``scopert export``. Acceptance tests run these, never a generic conv stack in a family's place.

``IMPORTED[name](folder)`` writes the seed checkpoint and imports it (a run folder); ``exported(name, folder)``
exports it once per folder and returns the .onnx path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _cnnt(tmp_path):
    from scopert.training.cnnt.importer import import_cnnt
    from tests.training.test_cnnt_import import SEED_JSON, _seed_files

    _, pt, js = _seed_files(tmp_path, SEED_JSON)
    return import_cnnt(pt, js, tmp_path / "run")


def _keras_rcan(tmp_path, ndim):
    from scopert.training.rcan.importer import import_keras_rcan
    from tests.training.test_keras_rcan_import import keras_rcan_config, write_keras_file

    shape = (6, 10, 12) if ndim == 3 else (10, 12)
    config, _ = keras_rcan_config(ndim=ndim, shape=shape, channels=4, groups=1, blocks=1, reduction=2)
    src = tmp_path / "weights_012_0.01234567.hdf5"
    write_keras_file(src, config, np.random.default_rng(7))
    return import_keras_rcan(src, tmp_path / "run")


def _unet(tmp_path):
    from scopert.training.unet.importer import import_pytorch3dunet
    from tests.training.test_unet_import import MODEL_SECTION, _seed_model, _write_seed_checkpoint, _write_yaml

    ckpt = _write_seed_checkpoint(tmp_path / "best_checkpoint.pytorch", _seed_model(MODEL_SECTION))
    return import_pytorch3dunet(ckpt, _write_yaml(tmp_path / "test.yaml", MODEL_SECTION), tmp_path / "run")


def _blindspot(tmp_path):
    from scopert.training.blindspot.importer import import_lightning_blindspot
    from tests.training.test_blindspot_import import _shine, _write_lightning_checkpoint

    model = _shine({"name": "3x3_blind", "frame_num": 3, "filter": 8})
    return import_lightning_blindspot(_write_lightning_checkpoint(tmp_path / "epoch=38.ckpt", model), tmp_path / "run")


def _tagan(tmp_path):
    from scopert.training.tagan.importer import import_tagan
    from scopert.training.tagan import model as tagan
    from tests.training.test_tagan_import import _opt, _randomize

    g = _randomize(tagan.build_model({"ngf": 8}), 1)
    torch.save(g.state_dict(), tmp_path / "1000_net_G.pth")
    return import_tagan(tmp_path / "1000_net_G.pth", tmp_path / "run", opt_txt=_opt(tmp_path))


IMPORTED = {"cnnt": _cnnt, "rcan": lambda p: _keras_rcan(p, 3), "rcan2d": lambda p: _keras_rcan(p, 2),
            "unet": _unet, "blindspot": _blindspot, "tagan": _tagan}


def exported(name: str, folder: Path) -> Path:
    """Import the family's seed checkpoint into ``folder`` and export it (once per folder)."""
    from scopert.export import export_run

    out = Path(folder) / f"{name}.onnx"
    if not out.exists():
        work = Path(folder) / name
        work.mkdir(parents=True, exist_ok=True)
        export_run(IMPORTED[name](work).folder, out)
    return out
