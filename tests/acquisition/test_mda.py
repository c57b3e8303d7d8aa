"""Issue 23: seed families restore the frames of a real pymmcore-plus MDA as they arrive.

A pure-Python camera (``UniMMCore``) replays real recordings from ``../shared/data``; the families are imported
from seed-format checkpoints and exported (``tests/families.py``), never a stand-in network. Every frame is
accounted for (received = restored + dropped + failed + unfinished), restored frames equal ``model.predict`` on
the same frames, and the store is read back with ome-zarr-py (an independent reader). Faults: inference raising
mid-run, the MDA cancelled, SIGINT to ``scopert acquire``: a clean end with the store complete and readable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
import tifffile

pytest.importorskip("pymmcore_plus")
useq = pytest.importorskip("useq")
ome_zarr_reader = pytest.importorskip("ome_zarr.reader")
from ome_zarr.io import parse_url  # noqa: E402

from scopert.acquisition import attach, replay_core  # noqa: E402
from scopert.runtime import load  # noqa: E402
from tests.families import exported  # noqa: E402
from tests.faults.helpers import default_sigint  # noqa: E402

TOLERANCE = 1e-5  # max |MDA - predict| / output range


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("acquire_models")


@pytest.fixture(scope="module")
def movie(data_dir):
    """40 real frames (trackpy bulk water), cropped to 96 x 128."""
    return np.ascontiguousarray(tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")
                                [:, 100:196, 200:328])


@pytest.fixture(scope="module")
def ovule(data_dir):
    with h5py.File(data_dir / "ovule_3d_seg" / "pytorch3dunet_sample_patch.h5", "r") as f:
        return np.ascontiguousarray(f["raw"][8:24, 40:104, 30:110])  # 16 x 64 x 80 planes


def read_store(path):
    """(raw level 0, restored level 0, restored metadata) through ome-zarr-py's Reader."""
    out = []
    for name in ("raw", "restored"):
        node = next(iter(ome_zarr_reader.Reader(parse_url(str(path / name)))()))
        out.append((np.asarray(node.data[0]), node.metadata))
    return out[0][0], out[1][0], out[1][1]


def _rel(got, expect):
    span = float(expect.max() - expect.min())
    assert span > 1e-3, "a flat output proves nothing"
    return float(np.abs(np.asarray(got, np.float64) - expect).max()) / span


def _expected_live(model, frames):
    """What a live run gives: 2D per frame; a centre-frame 2D+t model (blind-spot) each frame from its window;
    a 2D+t model with time in and out (CNNT) per chunk of ``time_window`` frames, the last short chunk run with
    the frames before it (a stream cannot normalize over frames that have not arrived)."""
    axes_in, axes_out = model.card.input.axes, model.card.output.axes
    if "t" not in axes_in:
        return np.stack([model.predict(f) for f in frames])
    if "t" not in axes_out:
        return model.predict(frames, axes="tyx")
    size, n = model.card.input.time_window, len(frames)
    chunks = [model.predict(frames[i:i + size], axes="tyx") for i in range(0, n - n % size, size)]
    if n % size:
        chunks.append(model.predict(frames[n - size:], axes="tyx")[size - n % size:])
    return np.concatenate(chunks)


@pytest.mark.parametrize("family", ["blindspot", "cnnt", "rcan2d", "tagan"])
def test_a_2d_family_restores_every_frame_of_a_replayed_movie(family, models, movie, tmp_path):
    model = load(exported(family, models), precision="f32")
    core = replay_core(movie, fps=None, pixel_size_um=0.65)
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": len(movie)})
    got = []
    with attach(core, model, seq, tmp_path / "run.zarr", on_full="block", on_restored=got.append) as run:
        core.mda.run(seq)
    report = run.report
    assert report.received == len(movie) == report.restored and report.accounted and report.kept_up
    assert [f.index["t"] for f in got] == list(range(len(movie)))  # in order, with their MDA index
    raw, restored, meta = read_store(tmp_path / "run.zarr")
    np.testing.assert_array_equal(raw[:, 0, 0], movie)  # every raw frame, bit for bit
    expect = _expected_live(model, movie)
    assert _rel(restored[:, 0, 0], expect) <= TOLERANCE
    assert _rel(np.stack([f.restored[0] for f in got]), expect) <= TOLERANCE  # the viewer sees what is on disk
    scale = meta["coordinateTransformations"][0][0]["scale"]
    assert scale[-2:] == [0.65, 0.65] and [a.get("unit") for a in meta["axes"]][-1] == "micrometer"


@pytest.mark.parametrize("family", ["rcan", "unet"])
def test_a_3d_family_restores_each_z_stack_when_it_is_complete(family, models, ovule, tmp_path):
    model = load(exported(family, models), precision="f32")
    core = replay_core(ovule, fps=None)
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 2}, z_plan={"range": 15, "step": 1},
                           axis_order="tpcz")
    with attach(core, model, seq, tmp_path / "vol.zarr", on_full="block") as run:
        core.mda.run(seq)
    assert run.report.received == 32 == run.report.restored and run.report.accounted
    raw, restored, meta = read_store(tmp_path / "vol.zarr")
    np.testing.assert_array_equal(raw[1, 0], ovule)
    expect = model.predict(ovule, axes="zyx")
    expect = expect if expect.ndim == 4 else expect[None]
    assert restored.shape[1] == expect.shape[0] and _rel(restored[1], expect) <= TOLERANCE
    assert [a["name"] for a in meta["axes"]] == list("tczyx")


def test_frames_the_cpu_cannot_keep_up_with_are_dropped_counted_and_the_mda_keeps_its_pace(models, movie, tmp_path):
    model = load(exported("rcan2d", models), precision="f32")
    real = model.predict

    def slow(frame, **kw):  # at most 50 frames/s on any CPU (the small net alone ran 190/s on a CI machine)
        time.sleep(0.02)
        return real(frame, **kw)

    model.predict = slow
    fps = 200.0  # four times what the model restores
    frames = np.concatenate([movie] * 3)  # 120 frames
    intervals = {}
    for attached in (False, True):
        core = replay_core(frames, fps=fps)
        seq = useq.MDASequence(time_plan={"interval": 0, "loops": len(frames)})
        stamps = []
        core.mda.events.frameReady.connect(lambda *a: stamps.append(time.perf_counter()))
        if attached:
            with attach(core, model, seq, tmp_path / "drop.zarr", on_full="drop", max_queue=2) as run:
                core.mda.run(seq)
        else:
            core.mda.run(seq)
        intervals[attached] = float(np.median(np.diff(stamps)))
    report = run.report
    assert report.received == len(frames) and report.accounted
    assert report.dropped > 0 and report.restored > 0 and not report.kept_up
    # the MDA's own pace is the camera's, with or without ScopeRT attached
    assert intervals[True] == pytest.approx(1 / fps, rel=0.2) and intervals[False] == pytest.approx(1 / fps, rel=0.2)
    raw, restored, _ = read_store(tmp_path / "drop.zarr")
    np.testing.assert_array_equal(raw[:, 0, 0], frames)  # raw frames are never dropped


def test_inference_raising_mid_run_ends_cleanly_with_every_raw_frame_written(models, movie, tmp_path):
    model = load(exported("rcan2d", models), precision="f32")
    real = model.predict
    calls = {"n": 0}

    def failing(frame, **kw):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("engine lost")
        return real(frame, **kw)

    model.predict = failing
    core = replay_core(movie, fps=None)
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 20})
    with attach(core, model, seq, tmp_path / "f.zarr", on_full="block") as run:
        core.mda.run(seq)
    report = run.report
    assert "engine lost" in report.error and report.finished
    assert report.restored == 5 and report.failed == 15 and report.accounted
    raw, restored, _ = read_store(tmp_path / "f.zarr")
    np.testing.assert_array_equal(raw[:, 0, 0], movie[:20])
    assert np.abs(restored[:5]).max() > 0 and np.abs(restored[5:]).max() == 0


def test_a_cancelled_mda_keeps_what_arrived_and_says_so(models, movie, tmp_path):
    import zarr

    model = load(exported("blindspot", models), precision="f32")
    core = replay_core(movie, fps=100)
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 400})
    threading.Timer(0.3, core.mda.cancel).start()
    with attach(core, model, seq, tmp_path / "c.zarr") as run:
        core.mda.run(seq)
    report = run.report
    assert report.cancelled and not report.finished and 0 < report.received < 400 and report.accounted
    summary = zarr.open_group(str(tmp_path / "c.zarr"), mode="r").attrs["scopert_acquisition"]
    assert summary["received"] == report.received and summary["cancelled"] is True
    raw, _, _ = read_store(tmp_path / "c.zarr")
    n = report.received
    np.testing.assert_array_equal(raw[:n, 0, 0], np.concatenate([movie] * 10)[:n])


def test_scopert_acquire_rehearses_on_a_replay_camera_and_survives_sigint(models, data_dir, tmp_path):
    model = exported("blindspot", models)
    seq = tmp_path / "seq.yaml"
    seq.write_text("time_plan:\n  interval: 0\n  loops: 3000\n")  # a minute at 50 fps
    movie = data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif"
    out = tmp_path / "live.zarr"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-m", "scopert", "acquire", "-m", str(model), "--sequence", str(seq),
                             "-o", str(out), "--camera", f"replay:{movie}:50", "--json", str(tmp_path / "r.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=default_sigint)
    deadline = time.time() + 120
    while len(list(tmp_path.glob(".live.zarr.partial-*/raw/0/*"))) < 20 and time.time() < deadline:
        time.sleep(0.2)  # until 20 raw frames are on disk
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "verdict" in stdout and "received" in stdout
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["interrupted"] and not report["finished"]
    assert report["received"] > 10 and report["received"] == (report["restored"] + report["dropped"]
                                                               + report["failed"] + report["unfinished"])
    raw, restored, _ = read_store(out)
    assert raw.shape[0] == report["received"] and np.abs(raw[-1]).max() > 0  # the time points acquired, no more
    assert not list(tmp_path.glob(".live.zarr.partial-*"))


def test_an_mda_that_ends_before_its_first_frame_leaves_an_empty_readable_store(models, movie, tmp_path):
    """Ctrl-C while pymmcore-plus still plans a long sequence: no time point arrived, so the store keeps none
    (was: the pyramid of all 100,000 planned time points was filled at close)."""
    model = load(exported("rcan2d", models), precision="f32")
    core = replay_core(movie, fps=None)
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 100000})
    t0 = time.perf_counter()
    with attach(core, model, seq, tmp_path / "e.zarr") as run:
        pass  # the MDA never delivered a frame
    assert time.perf_counter() - t0 < 30
    assert run.report.received == 0 and run.report.accounted
    import zarr

    group = zarr.open_group(str(tmp_path / "e.zarr"), mode="r")
    assert group["raw/0"].shape[0] == 0 == group["restored/0"].shape[0]


def test_a_tiff_output_holds_raw_and_restored_channels_with_the_pixel_size(models, movie, tmp_path):
    """-o OUT.ome.tif / OUT.tif: one hyperstack, Raw then Restored, opened by tifffile and by ScopeRT's reader."""
    from scopert.runtime.io import read_image

    model = load(exported("blindspot", models), precision="f32")
    expect = model.predict(movie[:12], axes="tyx")
    for name in ("run.ome.tif", "run.tif"):
        core = replay_core(movie[:12], fps=None, pixel_size_um=0.65)
        seq = useq.MDASequence(time_plan={"interval": 0.1, "loops": 12})
        with attach(core, model, seq, tmp_path / name, on_full="block") as run:
            core.mda.run(seq)
        assert run.report.restored == 12 and not list(tmp_path.glob(".*.partial-*"))
        with read_image(tmp_path / name) as image:
            data = np.asarray(image.array)
            assert image.axes == "tcyx" and image.channel_names == ["Raw", "Restored"]
            assert image.physical.get("x") == pytest.approx(0.65) and image.physical.get("t") == pytest.approx(0.1)
        np.testing.assert_array_equal(data[:, 0], movie[:12])  # raw counts, exact in float32
        assert _rel(data[:, 1], expect) <= TOLERANCE


@pytest.mark.parametrize("case, words", [
    ("no camera", "exactly one of them"),
    ("both cameras", "exactly one of them"),
    ("bad camera", "replay:MOVIE.tif"),
    ("missing movie", "does not exist"),
    ("missing sequence", "does not exist"),
    ("not a sequence", "not a useq-schema MDA sequence"),
    ("3D model, no z-plan", "no z-plan"),
    ("output exists", "--overwrite"),
    ("tiff with --ngff", "--ngff 0.5 is for OME-Zarr"),
    ("wrong suffix", ".zarr"),
])
def test_scopert_acquire_refuses_bad_input_in_one_line_before_the_mda(case, words, models, data_dir, tmp_path):
    from click.testing import CliRunner

    from scopert.cli import cli
    from scopert.errors import ScopertError

    movie = str(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")
    seq = tmp_path / "seq.yaml"
    seq.write_text("time_plan:\n  interval: 0\n  loops: 3\n")
    model = str(exported("unet" if case.startswith("3D") else "rcan2d", models))
    out = tmp_path / ("run.tif" if "tiff" in case else "run.txt" if "suffix" in case else "run.zarr")
    args = {"no camera": [], "both cameras": ["--camera", f"replay:{movie}", "--mm-config", movie],
            "bad camera": ["--camera", "usb:0"], "missing movie": ["--camera", "replay:/nope/movie.tif:10"]}.get(
        case, ["--camera", f"replay:{movie}"])
    if case == "missing sequence":
        seq = tmp_path / "missing.yaml"
    if case == "not a sequence":
        seq.write_text("time_plan: [1, 2\n")
    if case == "output exists":
        out.mkdir()
    if "ngff" in case:
        args += ["--ngff", "0.5"]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(cli, ["acquire", "-m", model, "--sequence", str(seq), "-o", str(out), *args])
    exc = result.exception  # scopert.cli.main prints it as one line and exits with its code
    assert isinstance(exc, ScopertError) and exc.exit_code == 2, (result.output, exc)
    assert words in str(exc) and "\n" not in str(exc), str(exc)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing left half-made
