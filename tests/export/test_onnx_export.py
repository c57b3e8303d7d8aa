"""ONNX export end to end on tiny families: one self-contained file, verified, with a card that round-trips."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from scopert.card import card_from_metadata
from scopert.errors import CardError, CheckpointError, ConfigError, InputError, OutputError, RunError
from scopert.export import export_run, read_card
from scopert.training.common.registry import Family, register
from scopert.checksum import sha256_file
from scopert.training.common.runfolder import RunInfo, save_checkpoint, write_run_info


# ---- tiny families, registered under names no real family uses ----------------------------------------
class TinyConv(nn.Module):
    """Three 3x3 convs: a local model with halo 3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyGap3d(nn.Module):
    """Two 3D convs with a global-average-pool gate (channel attention): tile-variant."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = nn.Conv3d(1, channels, 3, padding=1)
        self.b = nn.Conv3d(channels, 1, (1, 3, 3), padding=(0, 1, 1))
        self.gate = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        y = y * torch.sigmoid(self.gate(nn.functional.adaptive_avg_pool3d(y, 1)))
        return self.b(y)


class WidthScaled(nn.Module):
    """Multiplies by the width as a Python number: the tracer freezes it, so other widths go wrong."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * (float(x.shape[-1]) / 16.0)


def _fields_2d(cfg: dict) -> dict:
    return {
        "input": {"name": "raw", "axes": "bcyx", "channels": 1},
        "output": {"name": "restored", "axes": "bcyx", "channels": 1},
        "normalization": {"kind": "percentile", "pmin": 1.0, "pmax": 99.5},
        "tile_invariant": True,
        "default_tile": {"y": 64, "x": 64},
    }


def _fields_3d(cfg: dict) -> dict:
    return {
        "input": {"name": "input", "axes": "bczyx", "channels": 1},
        "output": {"name": "output", "axes": "bczyx", "channels": 1},
        "tile_invariant": True,  # wrong on purpose: the measurement must overrule it
    }


TINY = register(Family(
    name="test_export_tinyconv",
    build_model=lambda cfg: TinyConv(cfg.get("channels", 4)),
    card_fields=_fields_2d,
    export_shapes=lambda cfg: [(1, 1, 16, 16), (2, 1, 24, 40)],
))
GAP3D = register(Family(
    name="test_export_gap3d",
    build_model=lambda cfg: TinyGap3d(cfg.get("channels", 4)),
    card_fields=_fields_3d,
    export_shapes=lambda cfg: [(1, 1, 4, 16, 16), (2, 1, 6, 12, 20)],
))
SCALED = register(Family(
    name="test_export_widthscaled",
    build_model=lambda cfg: WidthScaled(1),
    card_fields=_fields_2d,
    export_shapes=lambda cfg: [(1, 1, 16, 16), (1, 1, 16, 24)],
))


def make_run(folder: Path, family: str, cfg: dict | None = None, seed: int = 0, checkpoint: bool = True) -> RunInfo:
    """A run folder with random weights, as training or an importer would leave it."""
    from scopert.training.common.registry import get_family

    info = RunInfo(folder, family, dict(cfg or {}), {"epochs": 0}, {})
    write_run_info(info)
    if checkpoint:
        torch.manual_seed(seed)
        model = get_family(family).build_model(info.model_config)
        save_checkpoint(info.best_checkpoint, {"model_state_dict": model.state_dict(), "epoch": 0})
    return info


def _torch_reference(info: RunInfo, x: np.ndarray) -> np.ndarray:
    from scopert.training.common.runfolder import load_model

    _, model = load_model(info.folder)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# ---- tests ------------------------------------------------------------------------------------------
def test_export_tiny_conv_end_to_end(tmp_path):
    info = make_run(tmp_path / "run", TINY.name, {"channels": 4})
    out = tmp_path / "models" / "tiny.onnx"
    card = export_run(info.folder, out)

    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.onnx"]  # one file, no .data, no .tmp
    assert card.family == TINY.name and card.name == "tiny"
    assert card.halo == {"y": 3, "x": 3} and card.tile_invariant
    assert card.source.sha256 == sha256_file(info.best_checkpoint)
    assert card.training_config["model"] == {"channels": 4}
    assert card.normalization.pmax == 99.5 and card.default_tile == {"y": 64, "x": 64}
    ver = card.verification["onnx_vs_torch"]
    assert len(ver["shapes"]) == 2 and ver["opset"] == 17
    assert 0 <= ver["max_abs_error"] <= 1e-4
    assert ver["max_abs_error"] == max(s["max_abs_error"] for s in ver["shapes"])

    assert read_card(out) == card
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert card_from_metadata(meta, where=str(out)) == card
    # dynamic axes: two shapes the export did not use, batch and both spatial axes changed
    rng = np.random.default_rng(1)
    for shape in [(3, 1, 20, 36), (1, 1, 33, 17)]:
        x = rng.uniform(0, 1, shape).astype(np.float32)
        got = session.run(["restored"], {"raw": x})[0]
        assert got.shape == shape
        assert np.max(np.abs(got - _torch_reference(info, x))) <= 1e-4


def test_export_3d_global_pool_is_marked_tile_variant(tmp_path, caplog):
    info = make_run(tmp_path / "run", GAP3D.name, {"channels": 4}, seed=3)
    out = tmp_path / "gap.onnx"
    with caplog.at_level(logging.WARNING, logger="scopert.export"):
        card = export_run(info.folder, out, opset=18)
    assert card.tile_invariant is False
    assert any("tile-invariant" in r.getMessage() for r in caplog.records)
    rf = card.verification["onnx_vs_torch"]["receptive_field"]
    assert rf["global_dependency"] and rf["global_axes"] == "zyx"
    assert card.halo["z"] <= 1 and 1 <= card.halo["y"] <= 2  # local part: (3,3,3) then (1,3,3)
    assert card.verification["onnx_vs_torch"]["max_abs_error"] <= 1e-4
    model = onnx.load(str(out))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {18}
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["b", "", "z", "y", "x"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).uniform(0, 1, (1, 1, 5, 9, 14)).astype(np.float32)
    assert np.max(np.abs(session.run(None, {"input": x})[0] - _torch_reference(info, x))) <= 1e-4


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    info = make_run(tmp_path / "run", TINY.name, checkpoint=False)
    out = tmp_path / "tiny.onnx"
    with pytest.raises(CheckpointError, match="no checkpoint"):
        export_run(info.folder, out)
    assert not out.exists()


def test_shape_dependent_graph_fails_verification(tmp_path):
    info = make_run(tmp_path / "run", SCALED.name)
    out = tmp_path / "scaled.onnx"
    with pytest.raises(RunError, match=r"differs from PyTorch by .* \(1, 1, 16, 24\)"):
        export_run(info.folder, out)
    assert not out.exists()


def test_bad_arguments_name_the_fix(tmp_path):
    info = make_run(tmp_path / "run", TINY.name)
    with pytest.raises(OutputError, match=r"\.onnx"):
        export_run(info.folder, tmp_path / "tiny.txt")
    with pytest.raises(ConfigError, match="at least two"):
        export_run(info.folder, tmp_path / "t.onnx", shapes=[(1, 1, 16, 16)])
    with pytest.raises(ConfigError, match="channels"):
        export_run(info.folder, tmp_path / "t.onnx", shapes=[(1, 1, 16, 16), (1, 2, 16, 16)])
    with pytest.raises(ConfigError, match="opset"):
        export_run(info.folder, tmp_path / "t.onnx", opset=11)
    if importlib.util.find_spec("onnxscript") is None:
        with pytest.raises(ConfigError, match="onnxscript"):
            export_run(info.folder, tmp_path / "t.onnx", opset=21)
    with pytest.raises(ConfigError, match="run folder"):
        export_run(tmp_path / "nowhere", tmp_path / "t.onnx")
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_read_card_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_card(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model\xff" * 10)
    with pytest.raises(InputError):
        read_card(junk)
    bare = tmp_path / "bare.onnx"
    torch.onnx.export(nn.Conv2d(1, 1, 3), (torch.zeros(1, 1, 8, 8),), str(bare), dynamo=False)
    with pytest.raises(CardError, match="scopert export"):
        read_card(bare)


# ---- the real RCAN family, small -----------------------------------------------------------------------
rcan_missing = importlib.util.find_spec("scopert.training.rcan.model") is None


@pytest.mark.skipif(rcan_missing, reason="scopert.training.rcan.model not written yet")
@pytest.mark.parametrize("ndim", [2, 3])
def test_export_small_rcan(tmp_path, ndim):
    cfg = {"ndim": ndim, "num_channels": 8, "num_residual_groups": 2, "num_residual_blocks": 1,
           "channel_reduction": 4, "input_shape": [16, 64, 64][3 - ndim:]}
    info = make_run(tmp_path / "run", "rcan", cfg, seed=ndim)
    out = tmp_path / f"rcan{ndim}d.onnx"
    card = export_run(info.folder, out)
    ver = card.verification["onnx_vs_torch"]
    assert ver["max_abs_error"] <= 1e-4
    assert card.tile_invariant is False and ver["receptive_field"]["global_dependency"]
    structural = 1 + 2 * (2 * 1 + 1) + 2  # head + G*(2B+1) + tail + out 3x3 convs
    spatial = "zyx"[3 - ndim:]
    assert set(card.halo) == set(spatial)
    assert all(3 <= h <= structural for h in card.halo.values()), card.halo
    assert read_card(out) == card


def test_the_card_records_the_largest_activation_that_tiles_are_sized_by(tmp_path):
    """A U-Net's widest filter bank lives at a coarse level: sizing tiles by it (channels x 4 B at every voxel)
    overestimated memory and made tiles small. The export records the largest activation per input voxel from
    ONNX shape inference (the full-resolution concat of skip and upsampled path), and the planner uses it."""
    from scopert.runtime import load
    from scopert.runtime.onnx_file import widest_filter_bank
    from tests.families import exported

    path = exported("unet", tmp_path)  # f_maps 8, 3 levels: channels 8, 16, 32
    acts = read_card(path).verification["activations"]
    assert acts["largest_bytes_per_voxel"] == (8 + 16) * 4 and "Concat" in acts["tensor"], acts
    assert widest_filter_bank(path) * 4 == 192 > 96  # the fallback (48 channels in, at half resolution) doubles it
    with load(path, backend="ort") as model:
        _, why = model.tile_choice({"z": 64, "y": 200, "x": 200})
    assert "(384 B per voxel, estimated from the graph)" in why, why  # 4 live buffers of the largest activation
