"""The seed families as their users bring them: small networks imported from checkpoints written in each original
repository's own format (Keras .hdf5, pytorch-3dunet .pytorch, CNNT .pt + .json, Lightning .ckpt, TA-GAN .pth),
then exported by ``scopert export``. Acceptance tests run these, never a generic conv stack in a family's place.

``IMPORTED[name](folder)`` writes the seed checkpoint and imports it (a run folder); ``exported(name, folder)``
exports it once per folder and returns the .onnx path. ``seed_size=True`` builds each family at the size its seed
trains by default (``SEED_SIZES``: compute-bound networks for benchmarks; the tests use the small ones).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


# Each seed's own default network (``../shared/reference/seeds.md``): 3D-RCAN's config.json; the pytorch-3dunet
# checkpoint the Flavell fork ships (3dunet_current); CNNT's CLI defaults; the blind-spot CLI defaults (--model
# 3x3_blind --frame_num 5 --filter 64); TA-GAN's netG (resnet_9blocks, ngf 64).
SEED_SIZES = {
    "rcan": {"channels": 32, "groups": 3, "blocks": 3, "reduction": 8},
    "unet": {"f_maps": 32, "num_groups": 8, "num_levels": 4},
    "cnnt": {"blocks": [32, 64, 96], "blocks_per_set": 4, "n_head": 8, "time": 16, "height": [128], "width": [128]},
    "blindspot": {"name": "3x3_blind", "frame_num": 5, "filter": 64},
    "tagan": {"ngf": 64},
}


def _cnnt(tmp_path, seed_size=False):
    from scopert.training.cnnt.importer import import_cnnt
    from tests.training.test_cnnt_import import SEED_JSON, _seed_files

    _, pt, js = _seed_files(tmp_path, dict(SEED_JSON, **SEED_SIZES["cnnt"]) if seed_size else SEED_JSON)
    return import_cnnt(pt, js, tmp_path / "run")


def _keras_rcan(tmp_path, ndim, seed_size=False):
    from scopert.training.rcan.importer import import_keras_rcan
    from tests.training.test_keras_rcan_import import keras_rcan_config, write_keras_file

    if seed_size:
        shape, size = ((8, 32, 32) if ndim == 3 else (32, 32)), SEED_SIZES["rcan"]
    else:
        shape, size = ((6, 10, 12) if ndim == 3 else (10, 12)), {"channels": 4, "groups": 1, "blocks": 1, "reduction": 2}
    config, _ = keras_rcan_config(ndim=ndim, shape=shape, **size)
    src = tmp_path / "weights_012_0.01234567.hdf5"
    write_keras_file(src, config, np.random.default_rng(7))
    return import_keras_rcan(src, tmp_path / "run")


def _unet(tmp_path, seed_size=False):
    from scopert.training.unet.importer import import_pytorch3dunet
    from tests.training.test_unet_import import MODEL_SECTION, _seed_model, _write_seed_checkpoint, _write_yaml

    section = dict(MODEL_SECTION, **SEED_SIZES["unet"]) if seed_size else MODEL_SECTION
    ckpt = _write_seed_checkpoint(tmp_path / "best_checkpoint.pytorch", _seed_model(section))
    return import_pytorch3dunet(ckpt, _write_yaml(tmp_path / "test.yaml", section), tmp_path / "run")


def _blindspot(tmp_path, seed_size=False):
    from scopert.training.blindspot.importer import import_lightning_blindspot
    from tests.training.test_blindspot_import import _shine, _write_lightning_checkpoint

    model = _shine(SEED_SIZES["blindspot"] if seed_size else {"name": "3x3_blind", "frame_num": 3, "filter": 8})
    return import_lightning_blindspot(_write_lightning_checkpoint(tmp_path / "epoch=38.ckpt", model), tmp_path / "run")


def _tagan(tmp_path, seed_size=False):
    from scopert.training.tagan.importer import import_tagan
    from scopert.training.tagan import model as tagan
    from tests.training.test_tagan_import import _opt, _randomize

    ngf = SEED_SIZES["tagan"]["ngf"] if seed_size else 8
    g = tagan.build_model({"ngf": ngf})  # at ngf 64, randomized BN statistics saturate the tanh everywhere
    g = g.eval() if seed_size else _randomize(g, 1)
    torch.save(g.state_dict(), tmp_path / "1000_net_G.pth")
    return import_tagan(tmp_path / "1000_net_G.pth", tmp_path / "run", opt_txt=_opt(tmp_path, ngf=ngf))


IMPORTED = {"cnnt": _cnnt, "rcan": lambda p, **kw: _keras_rcan(p, 3, **kw),
            "rcan2d": lambda p, **kw: _keras_rcan(p, 2, **kw), "unet": _unet, "blindspot": _blindspot, "tagan": _tagan}


def exported(name: str, folder: Path, seed_size: bool = False) -> Path:
    """Import the family's seed checkpoint into ``folder`` and export it (once per folder)."""
    from scopert.export import export_run

    stem = f"{name}_seed_size" if seed_size else name
    out = Path(folder) / f"{stem}.onnx"
    if not out.exists():
        work = Path(folder) / stem
        work.mkdir(parents=True, exist_ok=True)
        export_run(IMPORTED[name](work, seed_size=seed_size).folder, out)
    return out
