"""ONNX external data must stay inside the model's folder (scopert.runtime.onnx_file).

ONNX Runtime 1.32, OpenVINO and onnx.load refuse '..', absolute and symlinked locations already (tested below, so
a library upgrade that stops doing so shows up here); ScopeRT's own check refuses them up front for every
backend with one InputError that names the tensor, the location and the fix.
"""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from scopert.errors import InputError
from scopert.runtime import onnx_file
from scopert.runtime.onnx_file import check_external_data, external_data
from tests.runtime.graphs import conv_stack

FIX = "Keep the data file in the model's folder"


def _external_model(tmp_path):
    """conv_stack with every initializer in model/model.data; returns (external model path, inline model path)."""
    inline = tmp_path / "inline.onnx"
    conv_stack(inline)
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(onnx.load(str(inline)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.data", size_threshold=0)
    return path, inline


def _relocate(path, location, name="evil.onnx"):
    """A copy of ``path`` whose external tensors all point at ``location``."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    out = path.with_name(name)
    onnx.save(model, str(out))
    return out


def test_field_numbers_are_those_of_onnx_proto():
    fields = {
        (onnx.ModelProto, "graph"): 7, (onnx.ModelProto, "functions"): 25, (onnx.FunctionProto, "node"): 7,
        (onnx.GraphProto, "node"): 1, (onnx.GraphProto, "initializer"): 5, (onnx.GraphProto, "sparse_initializer"): 15,
        (onnx.NodeProto, "attribute"): 5, (onnx.AttributeProto, "t"): 5, (onnx.AttributeProto, "g"): 6,
        (onnx.AttributeProto, "tensors"): 10, (onnx.AttributeProto, "graphs"): 11,
        (onnx.AttributeProto, "sparse_tensor"): 22, (onnx.AttributeProto, "sparse_tensors"): 23,
        (onnx.SparseTensorProto, "values"): 1, (onnx.SparseTensorProto, "indices"): 2,
        (onnx.TensorProto, "name"): onnx_file._TENSOR_NAME,
        (onnx.TensorProto, "external_data"): onnx_file._TENSOR_EXTERNAL,
        (onnx.TensorProto, "data_location"): onnx_file._TENSOR_LOCATION,
    }
    for (message, name), number in fields.items():
        assert message.DESCRIPTOR.fields_by_name[name].number == number, (message.__name__, name)
    assert TensorProto.EXTERNAL == onnx_file.EXTERNAL
    kinds = {"graph": onnx_file._MODEL[7], "function": onnx_file._MODEL[25], "node": onnx_file._GRAPH[1],
             "tensor": onnx_file._GRAPH[5], "sparse": onnx_file._GRAPH[15], "attribute": onnx_file._NODE[5]}
    assert all(k == v for k, v in kinds.items())


def test_data_inside_the_folder_is_found_and_runs_like_the_inline_model(tmp_path):
    from scopert.runtime import load

    path, inline = _external_model(tmp_path)
    found = external_data(path)
    names = {t.name for t in onnx.load(str(inline)).graph.initializer}
    assert {e.tensor for e in found} == names and len(names) == 6
    assert {e.location for e in found} == {"model.data"}
    assert sum(e.length for e in found) == (path.parent / "model.data").stat().st_size
    check_external_data(path)

    image = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    got = load(path, backend="ort").predict(image, tile=(32, 32))
    ref = load(inline, backend="ort").predict(image, tile=(32, 32))
    assert np.abs(ref).mean() > 1e-3
    np.testing.assert_array_equal(got, ref)
    assert external_data(inline) == []


def _escaping(tmp_path, path, how):
    data = path.parent / "model.data"
    if how == "dotdot":
        shutil.copy(data, tmp_path / "secret.data")
        return _relocate(path, "../secret.data"), "contains '..'"
    if how == "absolute":
        shutil.copy(data, tmp_path / "secret.data")
        return _relocate(path, str(tmp_path / "secret.data")), "an absolute path"
    if how == "symlink":
        shutil.copy(data, tmp_path / "secret.data")
        os.symlink(tmp_path / "secret.data", path.parent / "link.data")
        return _relocate(path, "link.data"), "through a symbolic link"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_data_outside_the_folder_is_refused(tmp_path, how):
    path, _ = _external_model(tmp_path)
    evil, reason = _escaping(tmp_path, path, how)
    with pytest.raises(InputError, match="conv0_w") as err:
        check_external_data(evil)
    assert reason in str(err.value) and FIX in str(err.value) and str(path.parent) in str(err.value)
    # the libraries refuse too today (each with its own message); this documents it
    with pytest.raises(Exception, match="(?i)escapes|absolute"):
        ort.InferenceSession(str(evil), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="(?i)outside|relative path|symbolic link"):
        onnx.load(str(evil))


@pytest.mark.parametrize("backend", ["ort", "auto"])
def test_runtime_load_refuses_escaping_data_with_an_input_error(tmp_path, backend):
    """Today through the backends' own refusal; once load() calls check_external_data, with its message."""
    from scopert.runtime import load

    path, _ = _external_model(tmp_path)
    evil, _ = _escaping(tmp_path, path, "dotdot")
    with pytest.raises(InputError, match=r"\.\./secret\.data"):
        load(evil, backend=backend)


@pytest.mark.parametrize("location, damage, message", [
    ("missing.data", None, "does not exist"),
    ("model.data", "truncate", "cut short"),
    ("", None, "names no data file"),
])
def test_missing_short_or_unnamed_data_is_named(tmp_path, location, damage, message):
    path, _ = _external_model(tmp_path)
    evil = _relocate(path, location)
    if damage == "truncate":
        data = path.parent / "model.data"
        data.write_bytes(data.read_bytes()[:-8])
    with pytest.raises(InputError, match=message):
        check_external_data(evil)


def _mark_external(tensor, location, length):
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = TensorProto.EXTERNAL


def test_tensors_in_subgraphs_attributes_and_sparse_initializers_are_checked(tmp_path):
    """An If's branch holds a Constant whose tensor is external; a sparse initializer's values are external."""
    const = numpy_helper.from_array(np.ones((1, 4), np.float32), "branch_const")
    branch = helper.make_graph([helper.make_node("Constant", [], ["c"], value=const)], "then",
                               [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4])])
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sparse_w")
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "sparse_w_idx")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)], "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], sparse_initializer=[sparse])
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "m.data").write_bytes(const.raw_data)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    then_const = model.graph.node[0].attribute[0].g.node[0].attribute[0].t  # onnx.save_model leaves these inline
    _mark_external(then_const, "m.data", len(const.raw_data))
    _mark_external(model.graph.sparse_initializer[0].values, "../outside.data", 8)
    onnx.save(model, str(folder / "m.onnx"))

    found = {e.tensor: e.location for e in external_data(folder / "m.onnx")}
    assert found == {"branch_const": "m.data", "sparse_w": "../outside.data"}
    with pytest.raises(InputError, match="sparse_w.*'\\.\\./outside\\.data'"):
        check_external_data(folder / "m.onnx")


def test_damaged_model_files_give_a_result_or_an_input_error(tmp_path):
    """400 truncated and bit-flipped copies of an external-data model: never another exception."""
    path, _ = _external_model(tmp_path)
    data = path.read_bytes()
    rng = random.Random(0)
    outcomes = {"parsed": 0, "refused": 0}
    case = tmp_path / "model" / "case.onnx"
    for i in range(400):
        if i % 2:
            mutated = data[: rng.randrange(len(data))]
        else:
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        case.write_bytes(bytes(mutated))
        try:
            check_external_data(case)
            outcomes["parsed"] += 1
        except InputError as exc:
            assert str(exc)
            outcomes["refused"] += 1
    assert outcomes["parsed"] > 20 and outcomes["refused"] > 20, outcomes


def test_export_refuses_escaping_external_data(tmp_path):
    from scopert.export.onnx_export import read_card

    path, _ = _external_model(tmp_path)
    assert read_card(path).family == "test"
    evil, _ = _escaping(tmp_path, path, "dotdot")
    with pytest.raises(InputError, match="contains '..'"):
        read_card(evil)
