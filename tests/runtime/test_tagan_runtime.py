"""A trained TA-GAN through export and the runtime: G and S each get their own card; H and W that are not
multiples of the divisor are padded (reflect), never cropped; eval mode tiles exactly; seed-test mode exports
as per-image statistics and is marked tile-variant.

A tiny G/S (ngf 4) is trained for a few steps on crops of the real nuclei image (module fixture).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
import torch

from scopert.export import export_run
from scopert.runtime import load
from scopert.training.tagan import model as tagan
from scopert.training.common.runfolder import load_model
from scopert.training.tagan.data import degrade
from scopert.training.tagan.train import train_tagan


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """2 shared cores: one intra-op thread avoids OpenMP oversubscription when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exported(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tagan_rt")
    img = tifffile.imread(data_dir / "stardist_nuclei_2d" / "stardist_dsb2018_img2d.tif")
    mask = tifffile.imread(data_dir / "stardist_nuclei_2d" / "stardist_dsb2018_mask2d.tif")
    (root / "d" / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sl = np.s_[:128, :128]
    stack = np.stack([degrade(img[sl], rng), img[sl].astype(np.float32), (mask[sl] > 0).astype(np.float32)])
    tifffile.imwrite(root / "d" / "train" / "a.tif", stack, photometric="minisblack")
    cfg = {"dataroot": str(root / "d"), "ngf": 4, "ndf": 4, "batch_size": 2, "crop_size": 32, "niter": 2,
           "niter_decay": 0, "steps_per_epoch": 3, "seed": 0, "lambda_pixel": 10.0}
    info = train_tagan(cfg, root / "run", progress=False)
    seed_run = root / "run_seed_test"
    shutil.copytree(root / "run", seed_run)
    run_json = json.loads((seed_run / "run.json").read_text())
    run_json["model"]["inference_mode"] = "seed_test"
    (seed_run / "run.json").write_text(json.dumps(run_json))
    cards = {
        "G": export_run(info.folder, root / "G.onnx"),
        "S": export_run(info.folder / "segmentor", root / "S.onnx"),
        "G_seed": export_run(seed_run, root / "G_seed.onnx"),
    }
    return root, info, cards, img


def test_generator_and_segmentor_have_their_own_cards(exported):
    root, info, cards, _ = exported
    g, s = cards["G"], cards["S"]
    assert g.family == s.family == "tagan"
    assert g.training_config["model"]["role"] == "generator" and s.training_config["model"]["role"] == "segmentor"
    assert g.input.divisor == {"y": 4, "x": 4} and s.input.divisor == {"y": 4, "x": 4}
    assert g.tile_invariant and s.tile_invariant
    assert g.normalization.kind == "minmax" and g.normalization.symmetric
    for card in cards.values():
        assert card.verification["onnx_vs_torch"]["max_abs_error"] <= 1e-4
    assert g.source.sha256 != s.source.sha256
    assert "inference_mode_difference" in g.training_config["train"]


def _runtime_padding(size: int, halo: int, divisor: int) -> tuple[int, int]:
    """What the runtime adds before/after an axis that fits in one tile: the halo, then up to the divisor."""
    need = -(-(size + 2 * halo) // divisor) * divisor
    return halo, need - size - halo


def _torch_like_runtime(net, xn: np.ndarray, halo: dict[str, int]) -> np.ndarray:
    pads = [_runtime_padding(n, halo[ax], 4) for n, ax in zip(xn.shape, "yx")]
    padded = np.pad(xn, pads, mode="reflect")
    with torch.no_grad():
        y = net(torch.from_numpy(padded.astype(np.float32))[None, None])[0, 0].numpy()
    return y[pads[0][0]:pads[0][0] + xn.shape[0], pads[1][0]:pads[1][0] + xn.shape[1]]


def _norm(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return ((x - x.min()) / (x.max() - x.min()) * 2 - 1).astype(np.float32)


def test_odd_sizes_are_padded_not_cropped(exported):
    """70x90 is not a multiple of 4: the output has the input's shape and equals the model on the reflect-padded
    image (halo on both sides, then up to a multiple of 4), cropped back to 70x90."""
    root, info, cards, img = exported
    halo = cards["G"].halo
    model = load(root / "G.onnx", backend="ort", device="cpu")
    x = img[200:270, 150:240]
    out = model.predict(x, tile=(512, 512))
    assert out.shape == x.shape == (70, 90)
    _, g = load_model(info.folder)
    ref = _torch_like_runtime(tagan.export_module(g, info.model_config), _norm(x), halo)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_eval_mode_tiles_exactly_and_seed_test_mode_differs(exported):
    root, info, cards, img = exported
    x = img
    halo = max(cards["G"].halo.values())
    g = load(root / "G.onnx", backend="ort", device="cpu")
    whole = g.predict(x, tile=(1024, 1024))  # one window over the whole image
    tiled = g.predict(x, tile=(2 * halo + 48, 2 * halo + 48), stitch="crop")
    assert g.last_stats is not None
    assert np.max(np.abs(tiled - whole)) < 1e-4

    card = cards["G_seed"]
    assert not card.tile_invariant and "seed_test" in card.notes
    gs = load(root / "G_seed.onnx", backend="ort", device="cpu")
    seed_whole = gs.predict(x, tile=(1024, 1024))
    _, net = load_model(info.folder)
    seed_net = tagan.seed_test_module(net)
    # the runtime's reflect halo enters the per-image statistics: it equals the seed-test net on the padded image
    np.testing.assert_allclose(seed_whole, _torch_like_runtime(seed_net, _norm(x), card.halo), atol=1e-4)
    # the seed's test.py: train-mode BatchNorm at batch 1 (here without the random dropout) = seed_test_module
    xn = torch.from_numpy(_norm(x))[None, None]
    with torch.no_grad():
        unpadded = seed_net(xn)[0, 0].numpy()
        train_mode = tagan.export_module(net, info.model_config | {"inference_mode": "eval"}).train()(xn)[0, 0]
    np.testing.assert_allclose(unpadded, train_mode.numpy(), atol=1e-4)
    assert np.mean(np.abs(seed_whole - whole)) > 1e-3  # the two modes are different models
    assert gs.make_plan({"y": 512, "x": 512}, tile=(384, 384)).stitch == "blend"


def test_segmentor_runs_on_the_target_modality(exported):
    root, _, _, img = exported
    s = load(root / "S.onnx", backend="ort", device="cpu")
    out = s.predict(img[:100, :130])
    assert out.shape == (100, 130) and np.all(np.abs(out) <= 1.0)
