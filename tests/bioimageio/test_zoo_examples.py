"""The zoo spec repository's own example packages, imported as a user on an offline acquisition PC would.

The network is blocked in these tests: the description is validated without fetching its files, and only the
weights that are used are read. ``pytorch_state_dict`` weights load the package's own Python architecture file, so
they need ``--trust-package``.
"""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest

pytest.importorskip("bioimageio.core", reason="needs the bioimageio extra: pip install -c constraints.txt '.[bioimageio]'")

from bioimageio.spec.model import v0_5  # noqa: E402
from bioimageio.spec.utils import read_yaml, write_yaml  # noqa: E402

from scopert.errors import CheckpointError  # noqa: E402
from scopert.export.bioimageio.importer import import_package, load_model_description  # noqa: E402
from scopert.runtime import load  # noqa: E402


@pytest.fixture
def offline(monkeypatch):
    """No name resolution and no connections, as on a PC without internet."""
    def refuse(*args, **kwargs):
        raise OSError("network blocked in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def examples(data_dir):
    return data_dir / "bioimageio_examples"


def test_the_upsampling_package_imports_offline_and_reproduces_its_test_output(offline, examples, tmp_path):
    src = examples / "upsample_test_model"
    out = tmp_path / "up.onnx"
    res = import_package(src, out, trust_package=True)
    expected = np.load(src / "test_output.npy")
    scale = max(1.0, float(np.ptp(expected)))
    assert res.weights == "pytorch_state_dict" and res.max_abs_error <= 1e-4 * scale
    assert any("declare no sha256" in n for n in res.notes) and len(res.card.source.sha256) == 64
    assert res.card.output.scale == {"y": 4.0, "x": 4.0}
    x = np.load(src / "test_input.npy")
    for backend in ("ort", "openvino"):  # apply's path gives the package's numbers on every engine
        pytest.importorskip(backend if backend != "ort" else "onnxruntime")
        with load(out, backend=backend, device="cpu") as model:
            got = model.predict(x[0, 0], axes="yx")
        assert got.shape == expected.shape[2:]
        assert float(np.max(np.abs(got - expected[0, 0]))) <= 1e-4 * scale, backend


def test_package_code_runs_only_with_trust(offline, examples, tmp_path):
    with pytest.raises(CheckpointError, match=r"upsample_model.py:Upscaler\) is Python code.*--trust-package"):
        import_package(examples / "upsample_test_model", tmp_path / "up.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_remote_weights_entry_is_fetched_only_when_chosen(offline, examples, tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(examples / "upsample_test_model", pkg)
    rdf = read_yaml(pkg / "v0_4.bioimageio.yaml")
    rdf["weights"]["torchscript"] = {"source": "https://example.org/never/weights_torchscript.pt",
                                     "sha256": "0" * 64, "parent": "pytorch_state_dict"}
    write_yaml(rdf, pkg / "v0_4.bioimageio.yaml")
    # the first weights in ScopeRT's order is the remote torchscript: its fetch fails with the way out
    with pytest.raises(CheckpointError, match=r"torchscript weights \(https://example.org.*cannot be read.*"
                                              r"point weights.torchscript.source.*--weights"):
        import_package(pkg, tmp_path / "a.onnx", trust_package=True)
    # choosing the local weights imports offline; the remote entry is never touched
    res = import_package(pkg, tmp_path / "b.onnx", weights_format="pytorch_state_dict", trust_package=True)
    assert res.weights == "pytorch_state_dict" and (tmp_path / "b.onnx").is_file()
    assert not (tmp_path / "a.onnx").exists()


def test_a_format_0_4_fixed_shape_description_with_an_output_halo_loads(offline, examples):
    """bioimageio.spec refuses to convert it as it is ('output axis with halo and fixed size not allowed')."""
    descr = load_model_description(examples / "unet2d_fixed_shape")
    assert isinstance(descr, v0_5.ModelDescr)
    sizes = {str(a.id): a.size for a in descr.inputs[0].axes if a.type == "space"}
    assert sizes == {"y": 256, "x": 256}
    assert {str(a.id): a.halo for a in descr.outputs[0].axes if a.type == "space"} == {"y": 8, "x": 8}


def test_the_fixed_shape_package_reproduces_its_test_output_on_every_engine(offline, examples, tmp_path):
    """Issue 21: its 1x1x256x256 input ran as 1024 tiles (OpenVINO reshaped silently, ONNX Runtime refused every
    call), and the verified graph was not the one written."""
    import onnxruntime as ort

    src = examples / "unet2d_fixed_shape"
    out = tmp_path / "fixed.onnx"
    res = import_package(src, out, trust_package=True)
    x, expected = np.load(src / "test_input.npy"), np.load(src / "test_output.npy")
    limit = 1e-4 * max(1.0, float(np.ptp(expected)))
    card = res.card
    assert card.input.fixed == {"b": 1, "y": 256, "x": 256} and card.halo == {"y": 8, "x": 8}
    engines = card.verification["bioimageio_test_tensors"]["engines"]
    assert all(e["max_abs_error"] <= limit for e in engines.values()), engines
    # the bytes on disk are the graph that was verified
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    from scopert.export.bioimageio.package import normalize_whole

    written = session.run(None, {session.get_inputs()[0].name: normalize_whole(card, x.astype(np.float32))})[0]
    assert float(np.max(np.abs(written - expected))) == pytest.approx(res.max_abs_error, abs=1e-7)
    big = np.random.default_rng(0).random((901, 1101)).astype(np.float32)
    for backend in ("ort", "openvino"):
        with load(out, backend=backend, device="cpu") as model:  # apply's path: the whole image, one window
            got = model.predict(x[0, 0])
            assert float(np.max(np.abs(got - expected[0, 0]))) <= limit, backend
            assert model.predict(big).shape == big.shape  # tiles of exactly 256, the halo inside


def test_the_package_whose_output_is_half_its_input_imports_and_reproduces(offline, examples, tmp_path):
    """torch cannot export its instance norm with free sizes: exported for the test input's shape, said so."""
    src = examples / "unet2d_diff_output_shape"
    res = import_package(src, tmp_path / "diff.onnx", trust_package=True)
    x, expected = np.load(src / "test_input.npy"), np.load(src / "test_output.npy")
    limit = 1e-4 * max(1.0, float(np.ptp(expected)))
    assert res.card.output.scale == {"y": 0.5, "x": 0.5}
    assert any("exported for the test input's shape" in n for n in res.notes)
    for backend in ("ort", "openvino"):
        with load(tmp_path / "diff.onnx", backend=backend, device="cpu") as model:
            got = model.predict(x[0, 0])
            assert got.shape == (128, 128) and float(np.max(np.abs(got - expected[0, 0]))) <= limit, backend


@pytest.mark.parametrize("source", ["affable-shark", "https://example.org/models/rdf.yaml"])
def test_a_zoo_id_or_url_offline_is_one_clear_line(offline, source, tmp_path, monkeypatch, capsys):
    from scopert.cli import main

    monkeypatch.setattr("sys.argv", ["scopert", "import", "bioimageio", source, "-o", str(tmp_path / "m.onnx")])
    with pytest.raises(SystemExit) as ended:
        main()
    err = capsys.readouterr().err
    assert ended.value.code == 2 and f"{source} cannot be fetched" in err and "needs the internet" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []
