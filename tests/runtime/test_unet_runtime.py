"""The exported U-Net through the runtime: activation inside, ONNX vs PyTorch, whole vs tiled, HDF5 ``predictions``
(C, D, H, W) from ``scopert apply``, and ``Model.stream`` over ISBI slices. Small seeded (untrained) nets on real data.
"""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile
import torch

from scopert.export.onnx_export import export_run
from scopert.runtime import load
from scopert.training.unet.model import build_model
from scopert.training.common.runfolder import RunInfo, save_checkpoint, write_run_info

UNET3D = {"name": "UNet3D", "in_channels": 1, "out_channels": 2, "layer_order": "gcr", "f_maps": 8,
          "num_groups": 4, "num_levels": 3, "final_sigmoid": False, "is_segmentation": True}
UNET2D = {"name": "UNet2D", "in_channels": 1, "out_channels": 1, "layer_order": "gcr", "f_maps": 8,
          "num_groups": 4, "num_levels": 3, "final_sigmoid": True, "is_segmentation": True}


def make_run(folder, model_config, seed=0):
    torch.manual_seed(seed)
    model = build_model(model_config)
    info = RunInfo(folder, "unet", model_config, {}, {"format": "scopert-train"})
    write_run_info(info)
    save_checkpoint(info.best_checkpoint, {"model_state_dict": model.state_dict(), "epoch": 1, "val_loss": 0.0})
    return model.eval()


@pytest.fixture(scope="module")
def unet3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("unet3d")
    model = make_run(root / "run", UNET3D)
    card = export_run(root / "run", root / "unet3d.onnx")
    return root, model, card


@pytest.fixture(scope="module")
def ovule(data_dir):
    with h5py.File(data_dir / "ovule_3d_seg" / "pytorch3dunet_sample_patch.h5", "r") as f:
        return f["raw"][8:24, 20:84, 30:110]  # (16, 64, 80) uint16


def test_exported_unet_has_its_softmax_inside_and_matches_torch(unet3d, ovule):
    root, model, card = unet3d
    err = card.verification["onnx_vs_torch"]["max_abs_error"]
    print(f"\nUNet3D ONNX vs PyTorch max abs error: {err:.3g}")
    assert err <= 1e-4
    assert card.tile_invariant is False
    assert card.input.divisor == {"z": 4, "y": 4, "x": 4}
    rt = load(root / "unet3d.onnx")
    out = rt.predict(ovule)  # the card's default tile: the whole crop in one reflect-padded window
    assert out.shape == (2,) + ovule.shape
    assert np.allclose(out.sum(0), 1.0, atol=1e-5)  # softmax over channels is in the graph
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_tiled_vs_whole_volume_difference_is_measured(unet3d, ovule):
    root, _, _ = unet3d
    rt = load(root / "unet3d.onnx")
    whole = rt.predict(ovule)  # one window holds the whole crop
    diffs = {}
    for stitch in ("crop", "blend"):
        tiled = rt.predict(ovule, tile=(40, 64, 64), stitch=stitch, batch=2)
        diffs[stitch] = float(np.abs(tiled - whole).max())
    print(f"\nUNet3D tiled (40,64,64) vs whole volume, max abs difference: {diffs}")
    # GroupNorm(1) on the input normalizes each tile, so tiles differ from the whole volume, but boundedly
    assert all(np.isfinite(v) for v in diffs.values())
    assert 0.0 < diffs["crop"] < 1.0


def test_apply_to_hdf5_writes_predictions_cdhw(unet3d, ovule, tmp_path):
    root, _, _ = unet3d
    src = tmp_path / "ovule.h5"
    with h5py.File(src, "w") as f:
        f["raw"] = ovule
    dst = tmp_path / "ovule_predictions.h5"
    res = subprocess.run([sys.executable, "-m", "scopert", "apply", "-m", str(root / "unet3d.onnx"), "-i", str(src),
                          "-o", str(dst), "--precision", "f32"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    with h5py.File(dst, "r") as f:
        assert list(f.keys()) == ["predictions"]
        pred = f["predictions"][...]
    assert pred.shape == (2,) + ovule.shape and pred.dtype == np.float32
    assert np.allclose(pred.sum(0), 1.0, atol=1e-5)
    direct = load(root / "unet3d.onnx").predict(ovule)
    assert float(np.abs(pred - direct).max()) <= 1e-5


def test_stream_over_isbi_slices_equals_predict(tmp_path, data_dir):
    make_run(tmp_path / "run2d", UNET2D, seed=3)
    card = export_run(tmp_path / "run2d", tmp_path / "unet2d.onnx")
    assert card.verification["onnx_vs_torch"]["max_abs_error"] <= 1e-4
    slices = tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif")[:3, :160, :192]
    rt = load(tmp_path / "unet2d.onnx")
    expected = [rt.predict(s, tile=64, batch=2) for s in slices]
    streamed = list(rt.stream(list(slices), tile=64, batch=2))
    assert len(streamed) == 3
    assert all(o.shape == s.shape for o, s in zip(streamed, slices))
    assert max(float(np.abs(a - b).max()) for a, b in zip(streamed, expected)) <= 1e-6
    assert rt.last_stream.stats.as_dict()["produced"] == 3
    assert all(0.0 <= float(o.min()) and float(o.max()) <= 1.0 for o in streamed)  # sigmoid inside
