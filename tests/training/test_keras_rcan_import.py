"""Importing 3D-RCAN Keras .hdf5 files: proven by equal outputs against a numpy run of the Keras graph.

The helper below writes files in the exact layout Keras writes (root attrs model_config / training_config /
keras_version / backend; model_weights with layer_names; per layer weight_names and
model_weights/<layer>/<layer>/kernel:0). The reference evaluates that Keras graph layer by layer in numpy,
from the channels_last kernels, with its own 'same' cross-correlation: it shares no code with the importer.
"""

from __future__ import annotations

import codecs
import itertools
import json
import marshal
import random
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from scopert.errors import CheckpointError, OutputError
from scopert.training.rcan.importer import import_keras_rcan, parse_rcan_config, select_best_checkpoint
from scopert.training.rcan import model as rcan
from scopert.checksum import sha256_file
from scopert.training.common.runfolder import load_model, read_run_info

# ---- a Keras model_config generator for build_rcan ----------------------------------------------


def _code(fn) -> str:
    return codecs.encode(marshal.dumps(fn.__code__), "base64").decode("ascii")


class _Namer:
    """Keras layer names: Keras 2.2.4 counts from 1 (conv3d_1); tf.keras leaves the first unsuffixed
    (conv3d) and, in a process that built layers before, continues from a higher counter."""

    def __init__(self, style: str, start: int) -> None:
        self.style, self.start, self.count = style, start, {}

    def __call__(self, prefix: str) -> str:
        n = self.count.get(prefix, 0)
        self.count[prefix] = n + 1
        if self.style == "tf" and n == 0:
            return prefix
        return f"{prefix}_{self.start + n - (1 if self.style == 'tf' else 0)}"


def keras_rcan_config(ndim=3, shape=(6, 10, 12), channels=4, groups=1, blocks=1, reduction=2, scaling=1.0,
                      n_out=1, style="keras2", start=1, shuffle=False):
    """model_config (as a dict) of build_rcan, with the conv layer names in creation order."""
    name = _Namer(style, start)
    conv_cls, gap_cls = f"Conv{ndim}D", f"GlobalAveragePooling{ndim}D"
    layers, convs = [], []

    def add(cls, cfg, inputs, lname=None):
        lname = lname or name(cls_prefix(cls))
        layers.append({"name": lname, "class_name": cls, "config": {"name": lname, "trainable": True, **cfg},
                       "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]] if inputs else []})
        return lname

    def cls_prefix(cls):
        return {conv_cls: f"conv{ndim}d", gap_cls: f"global_average_pooling{ndim}d", "Reshape": "reshape",
                "Multiply": "multiply", "Add": "add", "Lambda": "lambda", "InputLayer": "input"}[cls]

    def conv(x, filters, k, activation="linear"):
        lname = add(conv_cls, {"filters": filters, "kernel_size": [k] * ndim, "strides": [1] * ndim,
                               "padding": "same", "data_format": "channels_last", "dilation_rate": [1] * ndim,
                               "activation": activation, "use_bias": True,
                               "kernel_initializer": {"class_name": "VarianceScaling",
                                                      "config": {"scale": 1.0, "mode": "fan_avg",
                                                                 "distribution": "uniform", "seed": None}},
                               "bias_initializer": {"class_name": "Zeros", "config": {}},
                               "kernel_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
                               "kernel_constraint": None, "bias_constraint": None}, [x])
        convs.append(lname)
        return lname

    def lam(x, fn, closure, lname=None):
        return add("Lambda", {"function": [_code(fn), None, closure], "function_type": "lambda",
                              "output_shape": None, "output_shape_type": "raw", "arguments": {}}, [x], lname)

    inp = add("InputLayer", {"batch_input_shape": [None, *shape, 1], "dtype": "float32", "sparse": False}, [],
              "input" if style == "tf" and start == 1 else name("input"))
    x = lam(inp, lambda x: 2 * x - 1, None, "lambda_standardize_1")
    x = conv(x, channels, 3)
    long_skip = x
    for _ in range(groups):
        short_skip = x
        for _ in range(blocks):
            skip = x
            x = conv(x, channels, 3, "relu")
            x = conv(x, channels, 3)
            y = add(gap_cls, {"data_format": "channels_last"}, [x])
            y = add("Reshape", {"target_shape": [1] * ndim + [channels]}, [y])
            y = conv(y, channels // reduction, 1, "relu")
            y = conv(y, channels, 1, "sigmoid")
            x = add("Multiply", {}, [x, y])
            if scaling != 1.0:
                x = lam(x, lambda x: scaling * x, [scaling])
            x = add("Add", {}, [x, skip])
        if groups == 1:
            break
        x = conv(x, channels, 3)
        x = add("Add", {}, [x, short_skip])
    x = conv(x, channels, 3)
    x = add("Add", {}, [x, long_skip])
    x = conv(x, n_out, 3)
    out = lam(x, lambda x: 0.5 * x + 0.5, None, "lambda_destandardize_1")
    if shuffle:
        random.Random(0).shuffle(layers)
    config = {"class_name": "Model" if style == "keras2" else "Functional",
              "config": {"name": "model_1", "layers": layers, "input_layers": [[inp, 0, 0]],
                         "output_layers": [[out, 0, 0]]}}
    return config, convs


def write_keras_file(path: Path, config: dict, rng: np.random.Generator, text_attrs: bool = False,
                     bad_shape: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a full Keras model file with random weights; returns {conv name: (kernel, bias)}."""
    layers = {layer["name"]: layer for layer in config["config"]["layers"]}
    ndim = len(next(v for v in layers.values() if v["class_name"] == "InputLayer")["config"]
               ["batch_input_shape"]) - 2
    in_ch = {}  # channels of each layer's output, for the kernel shapes
    weights = {}
    order = _topological(layers)
    for lname in order:
        layer = layers[lname]
        srcs = [n[0] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        cfg = layer["config"]
        if layer["class_name"] == "InputLayer":
            in_ch[lname] = cfg["batch_input_shape"][-1]
        elif layer["class_name"].startswith("Conv"):
            cin, cout, k = in_ch[srcs[0]], cfg["filters"], cfg["kernel_size"][0]
            bound = np.sqrt(6.0 / (k**ndim * (cin + cout)))
            kernel = rng.uniform(-bound, bound, (*[k] * ndim, cin, cout + (lname == bad_shape)))
            weights[lname] = (kernel.astype(np.float32), rng.uniform(-0.1, 0.1, cout).astype(np.float32))
            in_ch[lname] = cout
        elif layer["class_name"] == "Reshape":
            in_ch[lname] = cfg["target_shape"][-1]
        else:
            in_ch[lname] = in_ch[srcs[0]]
    with h5py.File(path, "w") as f:
        def attr(value: str):
            return value if text_attrs else value.encode("utf-8")

        f.attrs["model_config"] = attr(json.dumps(config))
        f.attrs["training_config"] = attr(json.dumps({"loss": "mae", "metrics": ["psnr"],
                                                      "optimizer_config": {"class_name": "Adam",
                                                                           "config": {"lr": 1e-4}}}))
        f.attrs["keras_version"] = attr("2.2.4" if not text_attrs else "2.10.0")
        f.attrs["backend"] = attr("tensorflow")
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([n.encode() for n in layers], dtype="S")
        for lname in layers:
            g = mw.create_group(lname)
            if lname in weights:
                names = [f"{lname}/kernel:0", f"{lname}/bias:0"]
                g.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
                g.create_dataset(names[0], data=weights[lname][0])
                g.create_dataset(names[1], data=weights[lname][1])
            else:
                g.attrs["weight_names"] = np.array([], dtype="S1")
        f.create_group("optimizer_weights").create_dataset("Adam/iterations:0", data=np.int64(100))
    return weights


def _topological(layers: dict) -> list[str]:
    done, order = set(), []

    def visit(n):
        if n in done:
            return
        for node in layers[n]["inbound_nodes"]:
            for src in node:
                visit(src[0])
        done.add(n)
        order.append(n)

    for n in layers:
        visit(n)
    return order


# ---- an independent numpy evaluation of the Keras graph -----------------------------------------


def conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras Conv (channels_last, padding 'same', stride 1): cross-correlation with (k..., Cin, Cout)."""
    nd = kernel.ndim - 2
    ks = kernel.shape[:nd]
    pad = [(0, 0)] + [(k // 2, k // 2) for k in ks] + [(0, 0)]
    xp = np.pad(x, pad)
    size = x.shape[1:-1]
    out = np.zeros((*x.shape[:-1], kernel.shape[-1]))
    for offs in itertools.product(*[range(k) for k in ks]):
        window = xp[(slice(None), *[slice(o, o + s) for o, s in zip(offs, size)], slice(None))]
        out += window @ kernel[offs]
    return out + bias


def keras_reference(config: dict, weights: dict, x: np.ndarray) -> np.ndarray:
    """Run a Keras model_config graph in float64 numpy, layer by layer, channels_last."""
    layers = {layer["name"]: layer for layer in config["config"]["layers"]}
    values = {}
    acts = {"linear": lambda v: v, "relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v))}
    for lname in _topological(layers):
        layer = layers[lname]
        ins = [values[n[0]] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        cls, cfg = layer["class_name"], layer["config"]
        if cls == "InputLayer":
            v = x.astype(np.float64)
        elif cls == "Lambda":
            if lname.startswith("lambda_standardize"):
                v = 2 * ins[0] - 1
            elif lname.startswith("lambda_destandardize"):
                v = 0.5 * ins[0] + 0.5
            else:
                v = cfg["function"][2][0] * ins[0]
        elif cls.startswith("Conv"):
            k, b = weights[lname]
            v = acts[cfg["activation"]](conv_same(ins[0], k.astype(np.float64), b.astype(np.float64)))
        elif cls.startswith("GlobalAveragePooling"):
            v = ins[0].mean(axis=tuple(range(1, ins[0].ndim - 1)))
        elif cls == "Reshape":
            v = ins[0].reshape(ins[0].shape[0], *cfg["target_shape"])
        elif cls == "Multiply":
            v = ins[0] * ins[1]
        elif cls == "Add":
            v = ins[0] + ins[1]
        else:
            raise AssertionError(cls)
        values[lname] = v
    out = config["config"]["output_layers"][0][0]
    return values[out]


def _torch_output(run_folder: Path, x_channels_last: np.ndarray) -> np.ndarray:
    _, model = load_model(run_folder)
    xt = torch.from_numpy(np.moveaxis(x_channels_last, -1, 1).astype(np.float32))
    with torch.no_grad():
        y = model(xt).numpy()
    return np.moveaxis(y, 1, -1)


# ---- equal outputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [
    dict(ndim=3, shape=(6, 10, 12), channels=4, groups=1, blocks=1, reduction=2),
    dict(ndim=3, shape=(5, 9, 8), channels=4, groups=2, blocks=1, reduction=2, style="tf", start=5, shuffle=True),
    dict(ndim=2, shape=(14, 11), channels=6, groups=2, blocks=2, reduction=3, scaling=0.25, style="tf", start=9),
    dict(ndim=3, shape=(4, 8, 8), channels=8, groups=3, blocks=1, reduction=4, style="keras2", start=11),
], ids=["3d-g1b1-keras2", "3d-g2b1-tfkeras-shuffled", "2d-g2b2-scaled", "3d-g3b1-suffix11"])
def test_imported_model_matches_numpy_keras_reference(tmp_path, case):
    rng = np.random.default_rng(7)
    style_text = case.get("style") == "tf"
    config, convs = keras_rcan_config(**case)
    src = tmp_path / "weights_012_0.01234567.hdf5"
    weights = write_keras_file(src, config, rng, text_attrs=style_text)

    info = import_keras_rcan(src, tmp_path / "run")
    cfg = info.model_config
    assert (cfg["ndim"], cfg["num_channels"], cfg["num_residual_groups"], cfg["num_residual_blocks"]) == \
        (case["ndim"], case["channels"], case["groups"], case["blocks"])
    assert cfg["channel_reduction"] == case["reduction"]
    assert cfg["residual_scaling"] == case.get("scaling", 1.0)
    assert cfg["input_shape"] == list(case["shape"])
    on_disk = read_run_info(tmp_path / "run")
    assert on_disk.family == "rcan" and on_disk.source["format"] == "keras-hdf5"
    assert on_disk.source["sha256"] == sha256_file(src)
    assert on_disk.train_config["epoch"] == 12

    x = rng.uniform(0, 1, (2, *case["shape"], 1))
    expected = keras_reference(config, weights, x)
    got = _torch_output(tmp_path / "run", x)
    assert got.shape == expected.shape
    err = np.abs(got - expected).max()
    print(f"max abs error vs numpy Keras reference: {err:.2e} (output std {expected.std():.3f})")
    assert err < 1e-5, err
    assert expected.std() > 1e-3  # the reference is not a constant that any model would match


def test_import_maps_by_graph_not_by_name_order(tmp_path):
    """With suffixes from 8, 'conv3d_10' sorts before 'conv3d_8' by name; the graph order still wins."""
    rng = np.random.default_rng(3)
    config, convs = keras_rcan_config(groups=2, blocks=1, style="keras2", start=8, shuffle=True)
    assert sorted(convs) != convs
    weights = write_keras_file(tmp_path / "m.hdf5", config, rng)
    import_keras_rcan(tmp_path / "m.hdf5", tmp_path / "run")
    _, model = load_model(tmp_path / "run")
    for keras_name, (_, module) in zip(convs, rcan.conv_layers_in_build_order(model)):
        kernel = weights[keras_name][0]
        assert np.array_equal(module.weight.detach().numpy(), np.moveaxis(kernel, (-1, -2), (0, 1)))


def test_default_size_config_parses_to_the_original_parameter_count():
    config, convs = keras_rcan_config(shape=(16, 256, 256), channels=32, groups=5, blocks=3, reduction=8)
    parsed = parse_rcan_config(config)
    assert len(parsed.conv_names) == len(convs) == 68
    assert parsed.conv_names == convs
    assert parsed.model_config["input_shape"] == [16, 256, 256]
    assert rcan.count_parameters(rcan.build_model(parsed.model_config)) == 1_002_621
    config3, _ = keras_rcan_config(shape=(8, 128, 128), channels=32, groups=3, blocks=3, reduction=8,
                                   style="tf", start=4)
    assert rcan.count_parameters(rcan.build_model(parse_rcan_config(config3).model_config)) == 613_349


# ---- choosing the best file in a folder ---------------------------------------------------------


def test_folder_import_picks_lowest_loss_in_file_name(tmp_path):
    rng = np.random.default_rng(11)
    folder = tmp_path / "model"
    folder.mkdir()
    config, convs = keras_rcan_config(ndim=2, shape=(12, 12))
    names = ["weights_001_0.50000000.hdf5", "weights_007_0.12500000.hdf5", "weights_010_0.25000000.hdf5",
             "model_final.hdf5", "weights_003_9e-5.hdf5"]  # the last two do not match the pattern: +inf
    written = {n: write_keras_file(folder / n, config, rng) for n in names}
    (folder / "notes.txt").write_text("not a model")

    assert select_best_checkpoint(folder).name == "weights_007_0.12500000.hdf5"
    info = import_keras_rcan(folder, tmp_path / "runs", name="best")
    assert info.folder == tmp_path / "runs" / "best"
    assert Path(info.source["path"]).name == "weights_007_0.12500000.hdf5"
    assert info.train_config["monitored_loss"] == 0.125
    _, model = load_model(info.folder)
    head = written["weights_007_0.12500000.hdf5"][convs[0]][0]
    assert np.array_equal(model.head.weight.detach().numpy(), np.moveaxis(head, (-1, -2), (0, 1)))

    write_keras_file(folder / "weights_020_-0.5.hdf5", config, rng)  # a signed loss is allowed by the regex
    assert select_best_checkpoint(folder).name == "weights_020_-0.5.hdf5"


def test_folder_with_only_unmatched_names_still_imports(tmp_path):
    rng = np.random.default_rng(0)
    config, _ = keras_rcan_config(ndim=2, shape=(8, 8))
    write_keras_file(tmp_path / "rcan.hdf5", config, rng)
    assert select_best_checkpoint(tmp_path).name == "rcan.hdf5"


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"no \*\.hdf5"):
        import_keras_rcan(tmp_path, tmp_path / "run")


# ---- errors ---------------------------------------------------------------------------------------


def test_hdf5_that_is_not_keras_is_an_error(tmp_path):
    with h5py.File(tmp_path / "data.hdf5", "w") as f:
        f.create_dataset("raw", data=np.zeros((4, 4), np.float32))
    with pytest.raises(CheckpointError, match="model_config"):
        import_keras_rcan(tmp_path / "data.hdf5", tmp_path / "run")
    (tmp_path / "text.hdf5").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable HDF5"):
        import_keras_rcan(tmp_path / "text.hdf5", tmp_path / "run")
    assert not (tmp_path / "run" / "run.json").exists()


def test_keras_weights_only_file_is_explained(tmp_path):
    with h5py.File(tmp_path / "w.hdf5", "w") as f:
        f.attrs["layer_names"] = np.array([b"conv3d_1"])
    with pytest.raises(CheckpointError, match="weights-only"):
        import_keras_rcan(tmp_path / "w.hdf5", tmp_path / "run")


def _edit(config: dict, layer_name: str, **changes) -> dict:
    for layer in config["config"]["layers"]:
        if layer["name"] == layer_name:
            for key, value in changes.items():
                if key == "class_name":
                    layer["class_name"] = value
                else:
                    layer["config"][key] = value
    return config


@pytest.mark.parametrize("edit,layer", [
    (lambda c, convs: _edit(c, "global_average_pooling3d_1", class_name="GlobalMaxPooling3D"),
     "global_average_pooling3d_1"),
    (lambda c, convs: _edit(c, convs[1], activation="elu"), "conv3d_2"),
    (lambda c, convs: _edit(c, convs[2], kernel_size=[5, 5, 5]), "conv3d_3"),
    (lambda c, convs: _edit(c, convs[0], strides=[1, 2, 2]), "conv3d_1"),
])
def test_keras_model_that_is_not_rcan_names_the_layer(tmp_path, edit, layer):
    rng = np.random.default_rng(1)
    config, convs = keras_rcan_config(groups=2, blocks=1)
    write_keras_file(tmp_path / "m.hdf5", edit(config, convs), rng)
    with pytest.raises(CheckpointError, match=rf"layer '{layer}'"):
        import_keras_rcan(tmp_path / "m.hdf5", tmp_path / "run")


def test_unet_like_keras_model_is_rejected(tmp_path):
    """A plain conv stack without channel attention is a Keras model, but not an RCAN."""
    layers = [
        {"name": "input_1", "class_name": "InputLayer", "config": {"batch_input_shape": [None, 32, 32, 1]},
         "inbound_nodes": []},
        {"name": "conv2d_1", "class_name": "Conv2D", "config": {"filters": 8, "kernel_size": [3, 3],
                                                                 "activation": "relu", "padding": "same"},
         "inbound_nodes": [[["input_1", 0, 0, {}]]]},
    ]
    with h5py.File(tmp_path / "u.hdf5", "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Model", "config": {"layers": layers}}).encode()
    with pytest.raises(CheckpointError, match="layer 'conv2d_1'"):
        import_keras_rcan(tmp_path / "u.hdf5", tmp_path / "run")


def test_weight_shape_mismatch_names_layer_and_shapes(tmp_path):
    rng = np.random.default_rng(2)
    config, convs = keras_rcan_config(groups=2, blocks=1, channels=4)
    write_keras_file(tmp_path / "m.hdf5", config, rng, bad_shape=convs[3])  # CA bottleneck: 3 outputs, not 2
    with pytest.raises(CheckpointError) as exc:
        import_keras_rcan(tmp_path / "m.hdf5", tmp_path / "run")
    msg = str(exc.value)
    assert f"'{convs[3]}'" in msg and "(1, 1, 1, 4, 3)" in msg and "(1, 1, 1, 4, 2)" in msg
    assert not (tmp_path / "run" / "run.json").exists()


def test_existing_run_folder_is_not_overwritten(tmp_path):
    rng = np.random.default_rng(4)
    config, _ = keras_rcan_config(ndim=2, shape=(8, 8))
    write_keras_file(tmp_path / "m.hdf5", config, rng)
    import_keras_rcan(tmp_path / "m.hdf5", tmp_path / "run")
    with pytest.raises(OutputError, match="already a run folder"):
        import_keras_rcan(tmp_path / "m.hdf5", tmp_path / "run")
    assert import_keras_rcan(tmp_path / "m.hdf5", tmp_path / "run", overwrite=True).family == "rcan"
