"""Clean graphs at export (Polygraphy's sanitize passes), and Polygraphy's OnnxrtRunner agreeing with ScopeRT.

Every family's FP32 and FP16 export: no node or initializer left that no output uses, ONNX Runtime silent at
warning level when it loads the file, outputs before/after sanitizing equal (0 for FP32). A third-party runner
(Polygraphy's OnnxrtRunner, through its Comparator) gives what ScopeRT's runtime gives on real tiles.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from scopert.errors import InputError
from scopert.export.precision import convert_fp16, load_calibration
from scopert.export.sanitize import graph_counts, sanitize_model
from tests.export.test_precision_fp16 import FAMILIES
from tests.runtime.graphs import conv_stack


def dead_parts(model) -> list[str]:
    """Initializers and nodes (Constant included) that no node and no graph output reads."""
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    dead = [f"initializer {i.name}" for i in model.graph.initializer if i.name not in used]
    dead += [f"node {n.name or n.op_type}" for n in model.graph.node if not any(o in used for o in n.output)]
    return dead


def ort_load_warnings(path, capfd) -> list[str]:
    """What ONNX Runtime logs at warning level (and above) while it loads ``path`` (its C++ log goes to fd 2)."""
    ort.set_default_logger_severity(2)
    opts = ort.SessionOptions()
    opts.log_severity_level = 2
    capfd.readouterr()
    try:
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    finally:
        text = capfd.readouterr().err
        ort.set_default_logger_severity(2)
    return [ln for ln in text.splitlines() if ":onnxruntime:" in ln]


def _ort(model_or_path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    s = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _with_dead_initializer(path):
    """A conv stack plus an unused Constant node and an unused initializer: what `export --fp16` used to leave."""
    conv_stack(path, ndim=2)
    m = onnx.load(str(path))
    m.graph.initializer.append(numpy_helper.from_array(np.ones((3,), np.float32), "dead_weight"))
    m.graph.node.insert(0, helper.make_node("Constant", [], ["/Constant_1_output_0"],
                                            value=numpy_helper.from_array(np.float32(2.0))))
    onnx.save(m, str(path))
    return m


def test_sanitize_removes_what_ort_warns_about_and_keeps_outputs(tmp_path, capfd):
    dirty = tmp_path / "dirty.onnx"
    model = _with_dead_initializer(dirty)
    before = ort_load_warnings(dirty, capfd)
    assert len(before) == 2 and all("Removing initializer" in w for w in before)  # the capture sees ORT's warnings
    clean, report = sanitize_model(model, "dirty.onnx")
    assert (report.nodes_removed, report.initializers_removed) == (0, 2) and dead_parts(clean) == []
    assert [p.key for p in clean.metadata_props] == [p.key for p in model.metadata_props]  # the card survives
    onnx.save(clean, str(tmp_path / "clean.onnx"))
    assert ort_load_warnings(tmp_path / "clean.onnx", capfd) == []
    x = np.random.default_rng(0).random((2, 1, 24, 40), np.float32)
    assert np.max(np.abs(_ort(dirty, x) - _ort(tmp_path / "clean.onnx", x))) == 0.0


def test_a_graph_polygraphy_cannot_sanitize_is_refused_and_nothing_written(tmp_path):
    from scopert.export.onnx_export import write_onnx

    k = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "k")
    graph = helper.make_graph(
        [helper.make_node("Frob", ["k"], ["kk"], domain="com.acme"), helper.make_node("Mul", ["input", "kk"], ["output"])],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 1, "y", "x"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 1, "y", "x"])], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)])
    model.ir_version = 8
    with pytest.raises(InputError, match="cannot sanitize custom.onnx .*com.acme:Frob.*export_module"):
        write_onnx(model, tmp_path / "custom.onnx")
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    del broken.graph.node[0]
    broken.graph.node[0].input[1] = "ghost"  # a tensor nothing produces
    with pytest.raises(InputError, match="broken.onnx is not a valid graph.*not output of any previous nodes.*Re-export"):
        write_onnx(broken, tmp_path / "broken.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("key", list(FAMILIES))
def test_every_family_export_is_clean_and_polygraphy_agrees(key, tmp_path, data_dir, capfd):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, CompareFunc

    from scopert.export import export_run
    from scopert.runtime import load
    from tests.export.test_onnx_export import make_run

    family, cfg, calib = FAMILIES[key]
    info = make_run(tmp_path / "run", family, cfg)
    fp32, fp16 = tmp_path / f"{key}.onnx", tmp_path / f"{key}.fp16.onnx"
    card = export_run(info.folder, fp32)
    cleaned = card.verification["onnx_vs_torch"]["sanitize"]
    assert cleaned["max_abs_change"] <= cleaned["tolerance"]  # FP32 outputs before and after: rounding at most
    assert cleaned["nodes_after"] <= cleaned["nodes_before"]
    res = convert_fp16(fp32, fp16, [data_dir / calib], tiles=2)
    for path in (fp32, fp16):
        model = onnx.load(str(path))
        assert dead_parts(model) == [], path.name
        assert graph_counts(sanitize_model(model, path.name)[0]) == graph_counts(model)  # nothing left to fold
        assert ort_load_warnings(path, capfd) == [], path.name

    # a third-party runner agrees with ScopeRT's runtime on real tiles
    x = load_calibration(card, [data_dir / calib], tiles=2)
    feed = {card.input.name: np.ascontiguousarray(x, np.float32)}
    polygraphy = Comparator.run([OnnxrtRunner(SessionFromOnnx(str(fp32)), name="polygraphy-onnxrt")],
                                data_loader=[feed])
    reference = polygraphy["polygraphy-onnxrt"][0][card.output.name]
    errors = {}
    import importlib.util

    for backend in ("ort", "openvino") if importlib.util.find_spec("openvino") else ("ort",):
        with load(fp32, backend=backend, device="cpu") as model:
            errors[model.backend.info.name] = float(np.max(np.abs(model.backend.run(feed[card.input.name])
                                                                  - reference)))
    scale = max(1.0, float(np.max(np.abs(reference))))
    assert errors["ort"] <= 1e-5 * scale, errors
    assert max(errors.values()) <= 1e-3 * scale, errors
    # and Polygraphy's own comparison of the sanitized FP16 graph against the FP32 one passes on the same tiles
    runs = Comparator.run([OnnxrtRunner(SessionFromOnnx(str(fp32)), name="fp32"),
                           OnnxrtRunner(SessionFromOnnx(str(fp16)), name="fp16")], data_loader=[feed])
    assert bool(Comparator.compare_accuracy(runs, compare_func=CompareFunc.simple(atol=1e-2, rtol=1e-2,
                                                                                 check_error_stat="mean")))
    print(f"\n| {key} | nodes {cleaned['nodes_before']} -> {cleaned['nodes_after']} | initializers "
          f"{cleaned['initializers_before']} -> {cleaned['initializers_after']} | OnnxrtRunner vs ScopeRT max abs "
          + ", ".join(f"{k} {v:.3g}" for k, v in errors.items()) + f" | fp16 PSNR {res.report.psnr_db:.1f} dB |")
