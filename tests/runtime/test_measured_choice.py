"""The measured CPU choice: the faster engine wins, the pick is cached and reused, and a changed engine
version is re-measured."""

from __future__ import annotations

import json
import logging

import pytest

from scopert.runtime import load
from scopert.runtime.backends.measured import ChoiceKey, cache_path, decide, read_cache
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
    assert model.backend.info.name == rec["backend"] == min(rec["seconds"], key=rec["seconds"].get)
    assert "measured now" in model.backend.info.reason
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "backend auto: measured openvino, ort" in text
    assert "cached measurement" in load(path).backend.info.reason
