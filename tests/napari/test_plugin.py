"""Issue 23: ScopeRT in napari, under Xvfb (pytest-xvfb): the restore widget runs seed families on layers and
cancels a long run; the live widget runs an MDA on a replay camera playing a real movie; the reader opens what
``scopert acquire`` and ``scopert apply`` wrote, with axes, names and pixel sizes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

napari = pytest.importorskip("napari")
pytest.importorskip("pymmcore_plus")
if not os.environ.get("DISPLAY"):
    pytest.skip("no display: the set-up installs Xvfb (apt xvfb), which pytest-xvfb starts", allow_module_level=True)

from scopert.napari_plugin.live_widget import LIVE_RAW, LiveWidget  # noqa: E402
from scopert.napari_plugin.reader import get_reader  # noqa: E402
from scopert.napari_plugin.restore_widget import RestoreWidget  # noqa: E402
from scopert.runtime import load  # noqa: E402
from tests.families import exported  # noqa: E402

TOLERANCE = 1e-5
MOVIE = ("trackpy_bulk_water", "bulk_water_first40.tif")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("napari_models")


@pytest.fixture(scope="module")
def isbi(data_dir):
    return tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif")


def _rel(got, expect):
    span = float(expect.max() - expect.min())
    assert span > 1e-3
    return float(np.abs(np.asarray(got, np.float64) - expect).max()) / span


@pytest.mark.parametrize("family, axes", [("rcan", "zyx"), ("rcan2d", "zyx"), ("unet", "zyx"), ("tagan", "zyx"),
                                          ("blindspot", "tyx"), ("cnnt", "tyx")])
def test_the_restore_widget_runs_a_family_on_a_layer_with_its_scale(family, axes, models, isbi, make_napari_viewer,
                                                                      qtbot):
    viewer = make_napari_viewer()
    data = np.ascontiguousarray(isbi[:8, 100:164, 200:280])
    source = viewer.add_image(data, name="em", scale=(0.05, 0.004, 0.004), translate=(1.0, 2.0, 3.0),
                              axis_labels=tuple(axes))
    widget = RestoreWidget(viewer)
    widget.panel.set_path(str(exported(family, models)))
    assert f"family: {widget.panel.model.card.family}" in widget.panel.card.text()
    assert "backend: " in widget.panel.card.text() and "precision: " in widget.panel.card.text()
    widget.layer.setCurrentText("em")
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.status.text().startswith("done"), widget.status.text()
    result = viewer.layers[1]  # the first added: the output's only channel, or its channel 0
    assert "restored" in result.name and len(viewer.layers) == 1 + widget.panel.model.card.output.channels
    assert widget.progress.value() == widget.progress.maximum() > 0
    expect = load(exported(family, models), precision="f32").predict(data, axes=axes)
    assert _rel(np.asarray(result.data), expect[0] if expect.ndim == 4 else expect) <= TOLERANCE
    np.testing.assert_allclose(result.scale, source.scale)
    np.testing.assert_allclose(result.translate, source.translate)


def test_cancel_stops_a_long_run_at_the_next_tile_and_adds_nothing(models, isbi, make_napari_viewer, qtbot,
                                                                     monkeypatch):
    from scopert.runtime import tile_cost

    monkeypatch.setattr(tile_cost, "available_memory", lambda: 2**28)  # many tiles (else the volume is one)
    viewer = make_napari_viewer()
    viewer.add_image(isbi, name="em", axis_labels=("z", "y", "x"))  # 30 planes of 512 x 512
    widget = RestoreWidget(viewer)
    widget.panel.set_path(str(exported("unet", models)))
    widget.layer.setCurrentText("em")
    widget.run()
    total = widget.progress.maximum()
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=60_000)
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.status.text().startswith("cancelled"), widget.status.text()
    assert widget.progress.value() < total and len(viewer.layers) == 1
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_the_live_widget_runs_an_mda_on_a_replay_camera_and_shows_what_is_on_disk(models, data_dir, tmp_path,
                                                                                     make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = LiveWidget(viewer)
    widget.panel.set_path(str(exported("rcan2d", models)))
    widget.camera_path.setText(str(data_dir.joinpath(*MOVIE)))
    widget.fps.setValue(30)
    widget.frames.setValue(45)
    widget.output.setText(str(tmp_path / "live.zarr"))
    seen_live = []
    viewer.layers.events.inserted.connect(lambda e: seen_live.append(e.value.name))
    widget.start_button.click()
    qtbot.waitUntil(lambda: widget.report is not None, timeout=120_000)
    report = widget.report
    assert LIVE_RAW in seen_live  # frames were shown while the MDA ran
    assert report.received == 45 and report.accounted and report.restored > 0
    assert [layer.name for layer in viewer.layers] == ["live raw", "live restored"]
    raw = np.asarray(viewer.layers["live raw"].data[0])  # level 0 of the pyramid (t, z, y, x)
    movie = tifffile.imread(data_dir.joinpath(*MOVIE))
    np.testing.assert_array_equal(raw[:, 0], np.concatenate([movie, movie])[:45])
    assert viewer.layers["live raw"].multiscale and "received 45" in widget.status.text()


def test_the_reader_opens_acquire_stores_and_apply_tiffs_with_names_and_pixel_sizes(models, data_dir, tmp_path,
                                                                                   isbi, make_napari_viewer):
    from click.testing import CliRunner

    from scopert.acquisition import attach, replay_core
    from scopert.cli import cli
    import useq

    model = load(exported("rcan2d", models), precision="f32")
    movie = tifffile.imread(data_dir.joinpath(*MOVIE))[:4]
    core = replay_core(movie, fps=None, pixel_size_um=0.65)
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": 4})
    with attach(core, model, seq, tmp_path / "acq.zarr", on_full="block"):
        core.mda.run(seq)
    layers = get_reader(str(tmp_path / "acq.zarr"))(str(tmp_path / "acq.zarr"))
    assert [meta["name"] for _, meta, _ in layers] == ["raw", "restored"]
    data, meta, kind = layers[1]
    assert kind == "image" and meta["multiscale"] and data[0].shape == (4, 1, 424, 640)
    assert meta["axis_labels"] == tuple("tzyx") and meta["scale"][-2:] == (0.65, 0.65)
    viewer = make_napari_viewer()  # through napari: the npe2 manifest names the reader
    opened = viewer.open(str(tmp_path / "acq.zarr"), plugin="scopert")
    assert [layer.name for layer in opened] == ["raw", "restored"] and opened[0].multiscale
    assert tuple(opened[1].axis_labels) == tuple("tzyx") and tuple(opened[1].scale[-2:]) == (0.65, 0.65)
    assert str(opened[1].units[-1]) == "micrometer"

    src = tmp_path / "em.tif"
    tifffile.imwrite(src, isbi[:3, :96, :128], imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"axes": "ZYX", "spacing": 0.05, "unit": "um"})
    result = CliRunner().invoke(cli, ["apply", "-m", str(exported("rcan2d", models)), "-i", str(src), "-o",
                                       str(tmp_path / "em_out.tif")])
    assert result.exit_code == 0, result.output
    layers = get_reader(str(tmp_path / "em_out.tif"))(str(tmp_path / "em_out.tif"))
    assert [meta["name"] for _, meta, _ in layers] == ["em_out Raw", "em_out Restored"]
    assert layers[1][0].shape == (3, 96, 128)
    np.testing.assert_allclose(layers[1][1]["scale"], (0.05, 0.004, 0.004), rtol=1e-3)
    assert get_reader(str(src)) is None  # not a ScopeRT output: napari's own readers open it
