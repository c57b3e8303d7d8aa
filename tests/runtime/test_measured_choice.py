"""The measured CPU choice: the faster engine wins, the pick is cached and reused, and a changed engine
version is re-measured."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scopert.runtime import load
from scopert.runtime.planning import PROBE_VOXELS, probe_tile
from scopert.runtime.selection.measured import ChoiceKey, cache_path, decide, read_cache
from scopert.runtime.tiling import round_up
from tests.runtime.graphs import conv_stack


def _key(**versions) -> ChoiceKey:
    return ChoiceKey("abc", "Fake CPU [avx2]", versions or {"onnxruntime": "1.0", "openvino": "2026.0"}, 2,
                     (1, 1, 256, 256))


def test_faster_engine_wins_and_is_reused(tmp_path):
    cache = tmp_path / "engines" / "cpu_choice.json"
    calls = []

    def measure():
        calls.append(1)
        return {"ort": 0.010, "openvino": 0.013}  # a CNNT-like model where ORT is faster

    first = decide(_key(), cache, measure)
    assert first.backend == "ort" and not first.reused and len(calls) == 1
    again = decide(_key(), cache, measure)
    assert again.backend == "ort" and again.reused and len(calls) == 1  # not measured again
    assert "cached measurement" in again.reason and "ort 10.0 ms" in again.reason
    rec = next(iter(read_cache(cache).values()))
    assert rec["seconds"] == {"ort": 0.01, "openvino": 0.013} and rec["versions"]["openvino"] == "2026.0"


def test_changed_engine_version_is_remeasured(tmp_path):
    cache = tmp_path / "cpu_choice.json"
    decide(_key(), cache, lambda: {"ort": 0.010, "openvino": 0.013})
    newer = _key(onnxruntime="1.0", openvino="2027.1")
    res = decide(newer, cache, lambda: {"ort": 0.012, "openvino": 0.006})
    assert res.backend == "openvino" and not res.reused
    assert "openvino 2026.0 -> 2027.1" in res.stale and "re-measured" in res.reason
    records = read_cache(cache)
    assert len(records) == 1 and next(iter(records.values()))["versions"]["openvino"] == "2027.1"


def test_other_cpu_or_shape_is_its_own_record(tmp_path):
    cache = tmp_path / "cpu_choice.json"
    decide(_key(), cache, lambda: {"ort": 0.010, "openvino": 0.013})
    other = ChoiceKey("abc", "Other CPU [avx512f]", {"onnxruntime": "1.0", "openvino": "2026.0"}, 2, (1, 1, 256, 256))
    res = decide(other, cache, lambda: {"ort": 0.02, "openvino": 0.01})
    assert res.backend == "openvino" and not res.stale and len(read_cache(cache)) == 2


def test_auto_measures_real_engines_once(tmp_path, caplog):
    pytest.importorskip("openvino")
    path = tmp_path / "c.onnx"
    conv_stack(path, ndim=2)
    with caplog.at_level(logging.INFO):
        model = load(path)
    rec = next(iter(json.loads(cache_path(path).read_text())["records"].values()))
    assert set(rec["seconds"]) == {"ort", "openvino"} and rec["input_shape"] == [1, 1, 256, 256]
    assert model.backend.info.name == rec["backend"]
    assert rec["seconds"][rec["backend"]] == min(rec["seconds"].values())  # recorded rounded: a tie may list either
    assert "measured now" in model.backend.info.reason
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "backend auto: measured openvino, ort" in text
    assert "cached measurement" in load(path).backend.info.reason


@settings(max_examples=200, deadline=None, derandomize=True)
@given(sizes=st.lists(st.integers(1, 1024), min_size=1, max_size=3), halo=st.integers(0, 40),
       divisor=st.sampled_from([1, 2, 4, 8, 16]), limit=st.integers(1, 1 << 20))
def test_probe_tile_shrinks_within_floor_and_divisor(sizes, halo, divisor, limit):
    axes = "zyx"[-len(sizes):]
    floor = {ax: 4 * halo + divisor for ax in axes}
    tile = {ax: round_up(max(n, floor[ax]), divisor) for ax, n in zip(axes, sizes)}
    probe = probe_tile(tile, floor, {ax: divisor for ax in axes}, limit)
    for ax in axes:
        assert probe[ax] % divisor == 0 and floor[ax] <= probe[ax] <= tile[ax]
    voxels = int(np.prod(list(probe.values())))
    # over the limit only when no axis can shrink any more
    assert voxels <= limit or all(round_up(max(probe[ax] // 2, floor[ax]), divisor) >= probe[ax] for ax in axes)


def test_measured_tile_is_capped(tmp_path):
    pytest.importorskip("openvino")
    path = tmp_path / "c.onnx"
    conv_stack(path, ndim=2)  # its card's default tile: 256x256 (65,536 voxels, under the cap)
    load(path)
    rec = next(iter(json.loads(cache_path(path).read_text())["records"].values()))
    assert int(np.prod(rec["input_shape"])) <= PROBE_VOXELS


def test_bf16_run_times_no_f32_engines_and_an_f32_run_does(tmp_path, monkeypatch):
    """--precision auto with a passed gate on a bf16 CPU goes to OpenVINO bf16 without measuring and without
    opening ONNX Runtime (issue 22: precision is decided before anything is opened); without the gate the
    measured f32 choice opens one ONNX Runtime session, the one it times."""
    pytest.importorskip("openvino")
    from tests.runtime.test_precision_auto import BF16, PASSED, _with_gate

    path = tmp_path / "c.onnx"
    conv_stack(path, ndim=2)
    monkeypatch.setattr("scopert.runtime.selection.cpu_caps", lambda *a, **k: BF16)
    closed = []
    from scopert.runtime.backends.ort import OrtBackend

    real_close, real_init, opened = OrtBackend.close, OrtBackend.__init__, []
    monkeypatch.setattr(OrtBackend, "close", lambda self: (closed.append(self), real_close(self)))
    monkeypatch.setattr(OrtBackend, "__init__",
                        lambda self, *a, **k: (opened.append(self), real_init(self, *a, **k))[1])
    model = load(path, precision="auto")  # no gate yet: f32, measured
    assert model.backend.info.precision == "fp32" and "measured now" in model.backend.info.reason
    assert len(opened) == 1  # the stand-in's ONNX Runtime session is the one the measurement used
    assert cache_path(path).exists()
    cache_path(path).unlink()
    _with_gate(path, PASSED)
    closed.clear()
    opened.clear()
    model = load(path, precision="auto")
    assert model.backend.info.name == "openvino" and model.backend.info.precision == "bf16"
    assert not cache_path(path).exists()  # nothing measured
    assert not opened and not closed  # no stand-in: nothing opened to be replaced
