"""A CNNT run exported to ONNX and run through the lean runtime: dynamic T/H/W, tiling over H and W,
sliding over time, streaming, padding of sizes the divisor does not divide, and short movies.

One tiny model (random weights, 2 levels, T = 4) is exported once per module; frames are real brightfield
video. Numbers asserted here are also printed for the report (``-s``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
import torch

from scopert.export.onnx_export import export_run
from scopert.runtime.loader import load
from scopert.training.cnnt import model as cnnt
from scopert.training.common.runfolder import RunInfo, save_checkpoint, write_run_info

T = 4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnnt_rt")
    torch.manual_seed(0)
    cfg = dataclasses.asdict(cnnt.CnntConfig.from_dict(
        {"blocks": [8, 16], "blocks_per_set": 1, "n_head": 4, "time": T, "height": 32, "width": 32,
         "with_mixer": False, "im_value_scale": [0.0, 255.0]}))
    model = cnnt.build_model(cfg).eval()
    info = RunInfo(folder / "run", "cnnt", cfg, {}, {"format": "test"})
    write_run_info(info)
    save_checkpoint(info.best_checkpoint, {"model_state_dict": model.state_dict(), "epoch": 1})
    card = export_run(folder / "run", folder / "cnnt.onnx")
    return model, card, load(folder / "cnnt.onnx", backend="ort")


@pytest.fixture(scope="module")
def movie(data_dir):
    stack = tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")
    return stack[:10, 150:198, 300:364].astype(np.float32)  # 10 frames of 48 x 64


def _torch(model, frames: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.clip(frames / 255.0, 0, 1).astype(np.float32))[None, :, None]
    with torch.no_grad():
        return model(x)[0, :, 0].numpy()  # the runtime does not clip the output either


def _torch_as_runtime(model, card, frames: np.ndarray) -> np.ndarray:
    """What the runtime computes for a movie that fits one tile: reflect padding by the halo (up to the divisor)."""
    pads = [(0, 0)]
    for ax, n in zip("yx", frames.shape[1:]):
        h, d = card.halo[ax], card.input.divisor[ax]
        need = -(-(n + 2 * h) // d) * d
        pads.append((h, need - n - h))
    out = _torch(model, np.pad(frames, pads, mode="reflect"))
    return out[:, pads[1][0] : pads[1][0] + frames.shape[1], pads[2][0] : pads[2][0] + frames.shape[2]]


def test_card_and_onnx_vs_torch(exported):
    _, card, _ = exported
    err = card.verification["onnx_vs_torch"]["max_abs_error"]
    print(f"CNNT_RUNTIME onnx_vs_torch={err:.3g} halo={card.halo}")
    assert err <= 1e-4
    assert card.input.axes == "btcyx" and card.input.time_window == T and not card.tile_invariant
    assert card.normalization.kind == "fixed" and card.normalization.scale == 255.0


def test_whole_chunk_equals_torch_and_tiles_are_close(exported, movie):
    model, card, rt = exported
    chunk = movie[:T]
    whole = rt.predict(chunk, tile=(T, 96, 96))  # one tile: the whole chunk plus its reflected halo
    want = _torch_as_runtime(model, card, chunk)
    print(f"CNNT_RUNTIME whole_vs_torch_padded_max={np.abs(whole - want).max():.3g}")
    assert np.abs(whole - want).max() < 1e-4
    print(f"CNNT_RUNTIME whole_vs_torch_unpadded_mean={np.abs(whole - _torch(model, chunk)).mean():.3g}")
    tiled = rt.predict(chunk, tile=(T, 32, 32))
    assert rt.last_stats is not None
    diff = np.abs(tiled - whole)
    print(f"CNNT_RUNTIME tiled_vs_whole max={diff.max():.3g} mean={diff.mean():.3g}")
    assert np.isfinite(tiled).all()
    assert diff.mean() < 0.5 * whole.std()  # instance norm and attention are per tile: close, not equal


def test_slides_over_time_on_a_longer_movie(exported, movie):
    model, _, rt = exported
    out = rt.predict(movie, tile=(T, 48, 64))
    assert out.shape == movie.shape
    # frames inside the second time window, away from the blend ramps, come from windows of T frames
    per_window = [_torch(model, movie[s : s + T]) for s in range(0, movie.shape[0] - T + 1)]
    best = min(np.abs(out[5] - w[5 - s]).mean() for s, w in enumerate(per_window) if s <= 5 < s + T)
    whole_movie = _torch(model, movie)  # attention over all 10 frames at once
    print(f"CNNT_RUNTIME slide_vs_window_mean={best:.3g} slide_vs_all_frames_mean={np.abs(out - whole_movie).mean():.3g}")
    assert best < 0.05 and np.isfinite(out).all()


def test_stream_gives_the_chunks_in_order(exported, movie):
    _, _, rt = exported
    outs = list(rt.stream(list(movie[:2 * T]), tile=(T, 48, 64)))
    assert len(outs) == 2 * T and outs[0].shape == movie.shape[1:]
    want = np.concatenate([rt.predict(movie[:T], tile=(T, 48, 64)), rt.predict(movie[T : 2 * T], tile=(T, 48, 64))])
    np.testing.assert_allclose(np.stack(outs), want, atol=1e-6)
    assert rt.last_stream.stats.dropped == 0


def test_sizes_not_divisible_by_the_divisor_are_padded_not_cropped(exported, movie):
    model, card, rt = exported
    assert card.input.divisor == {"y": 2, "x": 2}
    odd = movie[:T, :47, :63]
    out = rt.predict(odd, tile=(T, 96, 96))
    assert out.shape == odd.shape  # nothing cropped
    diff = np.abs(out - _torch_as_runtime(model, card, odd))
    print(f"CNNT_RUNTIME odd_size_vs_padded_torch_max={diff.max():.3g}")
    assert diff.max() < 1e-4


def test_fewer_frames_than_the_time_window_is_an_error(exported, movie):
    from scopert.errors import InputError

    _, _, rt = exported
    with pytest.raises(InputError, match="time window"):
        rt.predict(movie[: T - 2], tile=(T, 48, 64))


def test_stream_end_shorter_than_a_chunk_uses_the_previous_frames(exported, movie):
    _, _, rt = exported
    outs = list(rt.stream(list(movie[: T + 2]), tile=(T, 96, 96)))
    assert len(outs) == T + 2
    tail = rt.predict(movie[2 : T + 2], tile=(T, 96, 96))[-2:]
    np.testing.assert_allclose(np.stack(outs[-2:]), tail, atol=1e-6)
    from scopert.errors import InputError

    with pytest.raises(InputError, match="fewer than the model's time window"):
        list(rt.stream(list(movie[: T - 1]), tile=(T, 96, 96)))
