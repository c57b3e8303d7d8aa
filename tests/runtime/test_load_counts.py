"""Issue 22: ``load()`` reads the card once and opens one backend; nothing is opened to be replaced.

Counted on a real ONNX model: card parses (``ModelCard.from_dict``, which every card read goes through) and
backend constructions (every registered engine class), for a plain f32 load with the measured engine choice
cached, an auto-precision load whose card records a passed bf16 gate (OpenVINO bf16, opened directly), and a
named backend. The first load of a model measures ONNX Runtime against OpenVINO: both are opened (that is the
measurement) and the slower is closed."""

from __future__ import annotations

import pytest

from scopert.card import ModelCard
from scopert.runtime import load
from scopert.runtime.backends.ort import OrtBackend
from tests.runtime.graphs import conv_stack


@pytest.fixture
def counts(monkeypatch):
    seen = {"card": 0, "opened": [], "closed": 0}
    from_dict = ModelCard.from_dict.__func__

    def counting_from_dict(cls, *a, **k):
        seen["card"] += 1
        return from_dict(cls, *a, **k)

    monkeypatch.setattr(ModelCard, "from_dict", classmethod(counting_from_dict))
    classes = [OrtBackend]
    try:
        from scopert.runtime.backends.openvino import OpenVinoBackend

        classes.append(OpenVinoBackend)
    except ImportError:
        pass
    for cls in classes:
        init, close = cls.__init__, cls.close

        def counting_init(self, *a, _init=init, _name=cls.__name__, **k):
            seen["opened"].append(_name)
            return _init(self, *a, **k)

        def counting_close(self, _close=close):
            seen["closed"] += 1
            return _close(self)

        monkeypatch.setattr(cls, "__init__", counting_init)
        monkeypatch.setattr(cls, "close", counting_close)

    def reset():
        seen.update(card=0, opened=[], closed=0)
    seen["reset"] = reset
    return seen


def test_one_card_read_and_one_backend_per_load(tmp_path, counts, monkeypatch):
    pytest.importorskip("openvino")
    from tests.runtime.test_precision_auto import BF16, PASSED, _with_gate

    path = tmp_path / "c.onnx"
    conv_stack(path, ndim=2)
    first = load(path)  # the measured engine choice: both engines timed once, the slower closed
    print(f"\nfirst load: {counts['card']} card read(s), opened {counts['opened']}, closed {counts['closed']}")
    assert counts["card"] == 1 and len(counts["opened"]) == 2 and counts["closed"] == 1
    first.close()

    counts["reset"]()
    model = load(path)  # cached choice
    assert counts["card"] == 1 and len(counts["opened"]) == 1 and counts["closed"] == 0
    assert counts["opened"] == [{"ort": "OrtBackend", "openvino": "OpenVinoBackend"}[model.backend.info.name]]
    model.close()

    counts["reset"]()
    load(path, backend="ort")
    assert counts["card"] == 1 and counts["opened"] == ["OrtBackend"] and counts["closed"] == 0

    _with_gate(path, PASSED)
    monkeypatch.setattr("scopert.runtime.selection.cpu_caps", lambda *a, **k: BF16)
    counts["reset"]()
    model = load(path, precision="auto")
    assert model.backend.info.precision == "bf16"
    assert counts["card"] == 1 and counts["opened"] == ["OpenVinoBackend"] and counts["closed"] == 0
