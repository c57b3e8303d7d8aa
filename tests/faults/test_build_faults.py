"""``scopert build`` under faults, with the fake tensorrt of tests/fakes as ``tensorrt`` in the child: the engine
and its card appear together or not at all, and a rerun builds the same engine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.faults.helpers import SIGNALS, expect_clean_failure, interrupt_scopert, leftovers, run_scopert

PAD = 300_000  # the fake plan padded to 300 kB, so a file-size limit can bite on the engine and not before


def _args(models, engines):
    return ["build", models / "m3d.onnx", "--tile", "8,64,64", "-o", engines]


def _engine_files(engines):
    return sorted(p.name for p in engines.glob("*.engine*")) if engines.exists() else []


@pytest.fixture(scope="module")
def reference(fault_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("build_ref")
    run = run_scopert(_args(fault_models, root / "engines"), root, fake_trt=1, plan_pad=PAD)
    assert run.returncode == 0, run.stderr
    (engine,) = (root / "engines").glob("*.engine")
    assert engine.with_name(engine.name + ".card.json").exists()
    return engine.name, engine.read_bytes()


def _rerun_equals(fault_models, engines, reference, cwd):
    run = run_scopert(_args(fault_models, engines), cwd, fake_trt=1, plan_pad=PAD)
    assert run.returncode == 0, run.stderr[-2000:]
    name, data = reference
    assert _engine_files(engines) == [name, name + ".card.json"]
    assert (engines / name).read_bytes() == data


def test_without_tensorrt_refuses_and_writes_nothing(fault_models, tmp_path, ledger):
    code = "import sys; sys.modules['tensorrt'] = None; from scopert.cli import main; sys.argv[0] = 'scopert'; main()"
    engines = tmp_path / "engines"
    proc = subprocess.run([sys.executable, "-c", code, *map(str, _args(fault_models, engines))], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "TensorRT is not installed" in proc.stderr and not engines.exists()
    ledger.record("build", "no TensorRT", "exit 2: TensorRT is not installed ... ONNX Runtime runs it; nothing written")


def test_builder_raising(fault_models, reference, tmp_path, ledger):
    engines = tmp_path / "engines"
    run = run_scopert(_args(fault_models, engines), tmp_path, fake_trt=1, plan_pad=PAD, hook="trt_build", at=1,
                      action="raise")
    outcome = expect_clean_failure(run, (1,), "injected fault", folder=tmp_path)
    assert _engine_files(engines) == []
    _rerun_equals(fault_models, engines, reference, tmp_path)
    ledger.record("build", "builder raises mid-build", outcome + "; rerun: same engine")


@pytest.mark.parametrize("name", list(SIGNALS))
def test_signal_mid_build(name, fault_models, reference, tmp_path, ledger):
    sig, code, word = SIGNALS[name]
    engines = tmp_path / "engines"
    run = interrupt_scopert(_args(fault_models, engines), tmp_path, sig, at=1, hook="trt_build", slow=2.0,
                            fake_trt=1)
    outcome = expect_clean_failure(run, (code,), word, folder=tmp_path)
    assert _engine_files(engines) == []
    ledger.record("build", f"{name} mid-build", f"{outcome}; stopped in {run.seconds:.2f} s")


def test_disk_full_writing_the_engine(fault_models, reference, tmp_path, ledger):
    engines = tmp_path / "engines"
    run = run_scopert(_args(fault_models, engines), tmp_path, fake_trt=1, plan_pad=PAD, fsize=64 * 1024)
    outcome = expect_clean_failure(run, (1,), "disk full", ".engine", str(engines), folder=tmp_path)
    assert _engine_files(engines) == [] and leftovers(tmp_path) == []
    _rerun_equals(fault_models, engines, reference, tmp_path)
    ledger.record("build", "disk full writing the engine", outcome + "; rerun: same engine")
