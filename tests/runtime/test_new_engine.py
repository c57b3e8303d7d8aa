"""Issue 22: a new engine is one module plus one registry entry. With ``tests/runtime/echo_engine.py`` registered
(and nothing else changed), ``--backend`` lists it, ``load(..., backend='echo')`` runs it, ``auto`` picks it by
its declared priority, ``doctor`` reports it, and the precision choice knows it runs f32 only."""

from __future__ import annotations

import numpy as np
import pytest

from scopert.errors import ConfigError
from scopert.runtime import load
from scopert.runtime.backends import base
from tests.runtime.echo_engine import ENTRY
from tests.runtime.graphs import conv_stack


@pytest.fixture
def echo(monkeypatch):
    monkeypatch.setitem(base.REGISTRY, ENTRY.name, ENTRY)


def test_an_engine_is_one_module_and_one_entry(echo, tmp_path):
    from scopert.doctor import engine_report
    from scopert.runtime.normalize import fit_normalization

    path = tmp_path / "c.onnx"
    conv_stack(path, ndim=2)
    assert "echo" in base.backend_choices()
    x = np.random.default_rng(0).uniform(0, 1000, (40, 48)).astype(np.float32)
    model = load(path, backend="echo")
    out = model.predict(x)
    expect = fit_normalization(x, model.card.normalization)(x)  # the engine returns its (normalized) input
    assert model.backend.info.name == "echo" and np.allclose(out, expect, atol=1e-6)
    auto = load(path, device="cpu")  # priority 5 puts it before OpenVINO (30) and ONNX Runtime (40)
    assert auto.backend.info.name == "echo" and "Echo on the CPU" in auto.backend.info.reason
    assert "installed" in engine_report()["engine echo"]
    with pytest.raises(ConfigError, match="bf16 runs on the OpenVINO backend only, and --backend echo"):
        load(path, backend="echo", precision="bf16")
    assert load(path, backend="echo", precision="auto").backend.info.precision == "fp32"
