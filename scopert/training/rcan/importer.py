"""Import a 3D-RCAN Keras checkpoint (.hdf5, a full ``model.save`` file) into a ScopeRT run folder.

The file is read with h5py only; TensorFlow is never needed. The architecture comes from the
``model_config`` JSON: the Keras layer graph is put in its (unique) topological order, which is
build_rcan's creation order, and parsed block by block, so that groups, blocks, channels, reduction
and residual scaling are read from the graph itself and layer-name numbering (Keras 2.2.4 ``conv3d_1``,
tf.keras ``conv3d``/``conv3d_1``, suffixes starting anywhere) does not matter. Weights are then mapped
conv by conv onto ``scopert.training.rcan.model`` and transposed from channels_last to channels_first.

Must not import ``scopert.export``, ``scopert.runtime`` or TensorFlow.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from scopert.errors import CheckpointError, OutputError
from scopert.checksum import sha256_file
from scopert.training.common.runfolder import RUN_FILE, RunInfo, save_checkpoint, write_run_info

log = logging.getLogger(__name__)

FORMAT = "keras-hdf5"
# rcan/utils.py::get_model_path: the loss is group 2 of this pattern, matched at the start of the file name.
CHECKPOINT_NAME = re.compile(r"weights_(\d+)_([+-]?\d+(?:\.\d+)?)\.hdf5")
_HINT = "Only full Keras model files written by 3D-RCAN's train.py (build_rcan) can be imported."


# ---- choosing the file ---------------------------------------------------------------------------

def checkpoint_loss(path: Path) -> float:
    """The loss in a 3D-RCAN checkpoint name; +inf for names that do not match (as get_model_path does)."""
    match = CHECKPOINT_NAME.match(path.name)
    return float(match.group(2)) if match else math.inf


def select_best_checkpoint(folder: str | os.PathLike) -> Path:
    """The ``*.hdf5`` file with the lowest loss in its name, as 3D-RCAN's apply.py picks it.

    Files are visited in name order, so ties go to the first name (the original used filesystem order).
    """
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.hdf5") if p.is_file())
    if not files:
        raise CheckpointError(
            f"{folder} holds no *.hdf5 file. Pass a 3D-RCAN model file (weights_<epoch>_<loss>.hdf5) or the "
            "folder that train.py wrote them to."
        )
    best = min(files, key=checkpoint_loss)
    log.info("picked %s (lowest loss in the file name among %d files)", best.name, len(files))
    return best


# ---- reading the Keras file ----------------------------------------------------------------------

def _text(value: Any) -> str:
    """An HDF5 string attribute as str: h5py<3 wrote bytes, h5py>=3 reads str."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")  # a damaged name then fails by name, not here
    return str(value)


def _text_list(value: Any) -> list[str]:
    return [_text(v) for v in np.atleast_1d(value)]


def read_model_config(f: h5py.File, where: str) -> dict[str, Any]:
    """The root ``model_config`` attribute as a dict; its absence means this is not a full Keras model file."""
    if "model_config" not in f.attrs:
        if "layer_names" in f.attrs:
            why = "it is a Keras weights-only file (save_weights), which does not record the architecture"
        else:
            why = "it is an HDF5 file but not a Keras model (the root attribute 'model_config' is missing)"
        raise CheckpointError(f"{where}: {why}. {_HINT} (weights_<epoch>_<loss>.hdf5).")
    try:
        config = json.loads(_text(f.attrs["model_config"]))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{where}: the Keras model_config is not valid JSON ({exc}). The file is damaged.") from None
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict) or \
            not isinstance(config["config"].get("layers"), list):
        kind = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(
            f"{where}: the Keras model_config has no layer list (class {kind!r}); it is not a "
            f"functional Keras model. {_HINT}"
        )
    return config


# ---- parsing the architecture from the layer graph -----------------------------------------------

@dataclass
class Layer:
    name: str
    class_name: str
    config: dict[str, Any]
    inputs: list[str]


@dataclass
class ParsedRCAN:
    """What the Keras graph says: the ScopeRT model config and the conv layer names in build order."""

    model_config: dict[str, Any]
    conv_names: list[str] = field(default_factory=list)


def _inbound_names(node: Any) -> list[str]:
    """Names of the layers feeding one inbound node: Keras 2 lists ``[name, node, tensor, kwargs]``,
    Keras 3 nests ``keras_history`` entries."""
    names: list[str] = []

    def visit(item: Any) -> None:
        if isinstance(item, dict):
            if "keras_history" in item:
                history = item["keras_history"]
                ok = isinstance(history, list) and history and isinstance(history[0], str)
                names.append(history[0] if ok else "<damaged keras_history>")
                return
            for value in item.values():
                visit(value)
        elif isinstance(item, list):
            if len(item) >= 3 and isinstance(item[0], str) and isinstance(item[1], int):
                names.append(item[0])
            else:
                for value in item:
                    visit(value)

    visit(node)
    return names


def _layers(config: dict[str, Any], where: str) -> dict[str, Layer]:
    layers: dict[str, Layer] = {}
    for i, raw in enumerate(config["config"]["layers"]):
        cfg = raw.get("config", {}) if isinstance(raw, dict) else None
        name = (raw.get("name") or cfg.get("name")) if isinstance(cfg, dict) else None
        nodes = raw.get("inbound_nodes", []) if isinstance(raw, dict) else None
        if not isinstance(name, str) or not name or not isinstance(raw.get("class_name", ""), str) \
                or not isinstance(nodes, list):
            raise CheckpointError(
                f"{where}: layer entry {i} of the Keras model_config is not a layer (name, class_name, config, "
                f"inbound_nodes); the file is damaged or was edited. {_HINT}"
            )
        if name in layers:
            raise CheckpointError(f"{where}: two layers are named {name!r}; Keras names are unique, so the file is "
                                  f"damaged or was edited. {_HINT}")
        if len(nodes) > 1:
            raise CheckpointError(
                f"{where}: layer {name!r} ({raw.get('class_name')}) is used {len(nodes)} times; a 3D-RCAN model "
                f"calls every layer once. {_HINT}"
            )
        inputs = _inbound_names(nodes[0]) if nodes else []
        layers[name] = Layer(name, raw.get("class_name", ""), raw.get("config", {}), inputs)
    for layer in layers.values():
        for src in layer.inputs:
            if src not in layers:
                raise CheckpointError(f"{where}: layer {layer.name!r} reads from {src!r}, which the model does not have.")
    return layers


def _chain_order(layers: dict[str, Layer], where: str) -> list[Layer]:
    """Topological order of the graph, which must be unique.

    In build_rcan every layer feeds the next one it creates, so exactly one layer is ready at each step;
    the order is then the creation order whatever the layer names are.
    """
    pending = {name: len(set(layer.inputs)) for name, layer in layers.items()}
    consumers: dict[str, list[str]] = {name: [] for name in layers}
    for layer in layers.values():
        for src in set(layer.inputs):
            consumers[src].append(layer.name)
    ready = [name for name, n in pending.items() if n == 0]
    order: list[Layer] = []
    while ready:
        if len(ready) > 1:
            raise CheckpointError(
                f"{where}: layers {', '.join(repr(n) for n in sorted(ready))} run in parallel; a 3D-RCAN model is a "
                f"single chain with skip connections. {_HINT}"
            )
        name = ready.pop()
        order.append(layers[name])
        for nxt in consumers[name]:
            pending[nxt] -= 1
            if pending[nxt] == 0:
                ready.append(nxt)
    if len(order) != len(layers):
        raise CheckpointError(f"{where}: the Keras layer graph has a cycle or dangling layers. The file is damaged.")
    return order


class _Parser:
    """Recursive-descent parse of the chain of layers against build_rcan's structure."""

    def __init__(self, seq: list[Layer], where: str) -> None:
        self.seq = seq
        self.where = where
        self.i = 0
        self.ndim = 0
        self.conv_names: list[str] = []
        self.reductions: set[int] = set()
        self.scalings: list[float] = []

    # -- helpers ---------------------------------------------------------------------------------
    def fail(self, layer: Layer | None, expected: str) -> CheckpointError:
        if layer is None:
            return CheckpointError(f"{self.where}: the model ends early; expected {expected}. {_HINT}")
        return CheckpointError(
            f"{self.where}: layer {layer.name!r} ({layer.class_name}) does not fit a 3D-RCAN model: expected "
            f"{expected}. {_HINT}"
        )

    def peek(self, offset: int = 0) -> Layer | None:
        j = self.i + offset
        return self.seq[j] if j < len(self.seq) else None

    def is_conv(self, layer: Layer | None) -> bool:
        return layer is not None and layer.class_name in ("Conv2D", "Conv3D")

    def take(self, classes: tuple[str, ...], expected: str, inputs: set[str] | None) -> Layer:
        layer = self.peek()
        if layer is None or layer.class_name not in classes:
            raise self.fail(layer, expected)
        if inputs is not None and set(layer.inputs) != inputs:
            raise self.fail(layer, f"{expected} reading from {sorted(inputs)} (it reads from {layer.inputs})")
        self.i += 1
        return layer

    def conv(self, kernel: int, activation: str, inputs: set[str], filters: int | None, what: str) -> Layer:
        expected = f"{what} (Conv{self.ndim or 'N'}D, kernel {kernel}, activation {activation!r})"
        classes = (f"Conv{self.ndim}D",) if self.ndim else ("Conv2D", "Conv3D")
        layer = self.take(classes, expected, inputs)
        if not self.ndim:
            self.ndim = int(layer.class_name[4])
        cfg = layer.config
        ks = cfg.get("kernel_size")
        ks = [ks] * self.ndim if isinstance(ks, int) else ks
        if ks != [kernel] * self.ndim:
            raise self.fail(layer, f"{expected}; its kernel_size is {cfg.get('kernel_size')}")
        if (cfg.get("activation") or "linear") != activation:
            raise self.fail(layer, f"{expected}; its activation is {cfg.get('activation')!r}")
        checks = {
            "strides": lambda v: v in (None, 1) or v == [1] * self.ndim,
            "dilation_rate": lambda v: v in (None, 1) or v == [1] * self.ndim,
            "use_bias": lambda v: v in (None, True),
            "data_format": lambda v: v in (None, "channels_last"),
            "padding": lambda v: v in (None, "same") or kernel == 1,
            "groups": lambda v: v in (None, 1),
        }
        for key, ok in checks.items():
            if not ok(cfg.get(key)):
                raise self.fail(layer, f"{expected} with stride 1, 'same' padding, bias, channels_last; its {key} is "
                                       f"{cfg.get(key)!r}")
        count = cfg.get("filters")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise self.fail(layer, f"{expected} with a positive number of filters; it has {count!r}")
        if filters is not None and count != filters:
            raise self.fail(layer, f"{expected} with {filters} filters; it has {count}")
        self.conv_names.append(layer.name)
        return layer

    # -- grammar -----------------------------------------------------------------------------------
    def parse(self) -> dict[str, Any]:
        inp = self.take(("InputLayer",), "the InputLayer", set())
        shape = inp.config.get("batch_input_shape") or inp.config.get("batch_shape")
        if not isinstance(shape, list) or len(shape) not in (4, 5) or not isinstance(shape[-1], int) \
                or isinstance(shape[-1], bool) or shape[-1] < 1:
            raise self.fail(inp, f"a 2D or 3D channels_last input; its batch_input_shape is {shape!r}")
        std = self.take(("Lambda",), "the input standardization Lambda (2x-1)", {inp.name})
        head = self.conv(3, "linear", {std.name}, None, "the head conv")
        channels = head.config.get("filters")
        if len(shape) - 2 != self.ndim:
            raise self.fail(head, f"a Conv{len(shape) - 2}D for a {len(shape) - 2}D input of shape {shape}")

        x = head.name
        groups: list[tuple[int, bool]] = []
        while True:
            group_in, blocks = x, 0
            while self.is_conv(self.peek()) and self.is_conv(self.peek(1)):
                x = self.block(x, channels)
                blocks += 1
            if blocks == 0:
                raise self.fail(self.peek(), "a residual channel attention block (two 3x3 convs)")
            if self.at_network_tail():
                groups.append((blocks, False))
                break
            tail = self.conv(3, "linear", {x}, channels, "the residual group's tail conv")
            x = self.take(("Add",), "the residual group's skip Add", {tail.name, group_in}).name
            groups.append((blocks, True))
            if self.at_network_tail():
                break

        if len(groups) == 1 and groups[0][1]:
            raise self.fail(self.seq[self.i - 2], "no group tail conv: build_rcan adds none when there is one group")
        if any(b != groups[0][0] for b, _ in groups):
            raise CheckpointError(
                f"{self.where}: residual groups have different numbers of blocks ({[b for b, _ in groups]}); "
                f"build_rcan uses the same number in every group. {_HINT}"
            )

        tail = self.conv(3, "linear", {x}, channels, "the network's tail conv")
        x = self.take(("Add",), "the long-skip Add", {tail.name, head.name}).name
        out = self.conv(3, "linear", {x}, None, "the output conv")
        self.take(("Lambda",), "the output destandardization Lambda (0.5y+0.5)", {out.name})
        if self.i != len(self.seq):
            raise self.fail(self.peek(), "nothing after the output Lambda")
        if len(set(self.scalings)) > 1:
            raise CheckpointError(f"{self.where}: the blocks use different residual scalings {self.scalings}. {_HINT}")

        (bottleneck,) = self.reductions
        return {
            "ndim": self.ndim,
            "num_channels": channels,
            "num_residual_blocks": groups[0][0],
            "num_residual_groups": len(groups),
            "channel_reduction": _reduction_for(channels, bottleneck, self.where),
            "residual_scaling": self.scalings[0] if self.scalings else 1.0,
            "num_input_channels": shape[-1],
            "num_output_channels": out.config.get("filters"),
            "input_shape": list(shape[1:-1]),
        }

    def at_network_tail(self) -> bool:
        """Conv, Add, Conv, Lambda and then the end: the tail that follows the last group."""
        kinds = [layer.class_name if layer else None for layer in (self.peek(k) for k in range(4))]
        return (self.is_conv(self.peek(0)) and kinds[1] == "Add" and self.is_conv(self.peek(2))
                and kinds[3] == "Lambda" and self.i + 4 == len(self.seq))

    def block(self, x: str, channels: int) -> str:
        c1 = self.conv(3, "relu", {x}, channels, "the first conv of a residual block")
        c2 = self.conv(3, "linear", {c1.name}, channels, "the second conv of a residual block")
        gap = self.take((f"GlobalAveragePooling{self.ndim}D",), "the channel attention's global average pooling",
                        {c2.name})
        rs = self.take(("Reshape",), "the channel attention's Reshape", {gap.name})
        down = self.conv(1, "relu", {rs.name}, None, "the channel attention's reducing 1x1 conv")
        self.reductions.add(down.config.get("filters"))
        if len(self.reductions) > 1:
            raise self.fail(down, f"the same bottleneck width as the other blocks ({sorted(self.reductions)})")
        up = self.conv(1, "sigmoid", {down.name}, channels, "the channel attention's expanding 1x1 conv")
        y = self.take(("Multiply",), "the channel attention's Multiply", {c2.name, up.name}).name
        nxt = self.peek()
        if nxt is not None and nxt.class_name == "Lambda":
            lam = self.take(("Lambda",), "the residual scaling Lambda", {y})
            self.scalings.append(_lambda_scale(lam, self))
            y = lam.name
        elif self.scalings:
            raise self.fail(nxt, "the residual scaling Lambda that the other blocks have")
        return self.take(("Add",), "the residual block's skip Add", {y, x}).name


def _lambda_scale(layer: Layer, parser: _Parser) -> float:
    """build_rcan's ``Lambda(lambda x: residual_scaling * x)`` keeps the factor in the serialized closure."""
    fn = layer.config.get("function")
    closure = fn[2] if isinstance(fn, list) and len(fn) == 3 else None
    if isinstance(closure, list) and len(closure) == 1 and isinstance(closure[0], (int, float)) \
            and not isinstance(closure[0], bool) and math.isfinite(closure[0]):
        return float(closure[0])
    raise parser.fail(layer, "a residual scaling Lambda whose closure holds the scaling factor (cannot read it)")


def _reduction_for(channels: int, bottleneck: int, where: str) -> int:
    """A channel_reduction r with channels // r == bottleneck (any such r builds the same model)."""
    if isinstance(bottleneck, int) and 0 < bottleneck <= channels:
        if channels // (channels // bottleneck) == bottleneck:
            return channels // bottleneck
        for r in range(1, channels + 1):
            if channels // r == bottleneck:
                return r
    raise CheckpointError(
        f"{where}: the channel attention bottleneck has {bottleneck} filters, which no channel_reduction gives for "
        f"{channels} channels. {_HINT}"
    )


def parse_rcan_config(model_config: dict[str, Any], where: str = "model") -> ParsedRCAN:
    """Read build_rcan's arguments and the conv layer names (in build order) from a Keras model_config."""
    seq = _chain_order(_layers(model_config, where), where)
    parser = _Parser(seq, where)
    cfg = parser.parse()
    shape = cfg["input_shape"]
    if not all(isinstance(s, int) and s > 0 for s in shape):
        from scopert.training.rcan.model import DEFAULT_INPUT_SHAPE

        log.warning("%s: the stored input shape %s is not fixed; using the default tile %s", where, shape,
                    DEFAULT_INPUT_SHAPE[cfg["ndim"]])
        cfg["input_shape"] = list(DEFAULT_INPUT_SHAPE[cfg["ndim"]])
    return ParsedRCAN(cfg, parser.conv_names)


# ---- weights -------------------------------------------------------------------------------------

def _member(group: h5py.Group, name: str, kind: type) -> Any:
    """``group[name]`` when it is a ``kind`` stored in this file (a hard link), else None: external links and
    soft links could make the weights come from another file or another place."""
    if not name or not isinstance(group.get(name, getlink=True), h5py.HardLink):
        return None
    item = group[name]
    return item if isinstance(item, kind) else None


def _read_conv_weights(weights: h5py.Group, layer: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    group = _member(weights, layer, h5py.Group)
    if group is None:
        raise CheckpointError(f"{where}: model_weights has no group for layer {layer!r}; the file is incomplete.")
    found: dict[str, np.ndarray] = {}
    for wname in _text_list(group.attrs.get("weight_names", [])):
        key = wname.rsplit("/", 1)[-1].split(":")[0]
        data = _member(group, wname, h5py.Dataset)
        if data is None:
            raise CheckpointError(f"{where}: layer {layer!r} lists weight {wname!r} but the file does not hold it.")
        if data.dtype.kind not in "fiu" or data.is_virtual or data.external:
            raise CheckpointError(
                f"{where}: weight {wname!r} of layer {layer!r} is not a numeric array stored in this file "
                f"(dtype {data.dtype}{', virtual' if data.is_virtual else ''}{', external' if data.external else ''})."
                " Import the .hdf5 file that 3D-RCAN's train.py wrote."
            )
        found[key] = np.asarray(data, dtype=np.float32)
        if not np.isfinite(found[key]).all():
            raise CheckpointError(f"{where}: weight {wname!r} of layer {layer!r} holds NaN or Inf values; the "
                                  "checkpoint is unusable. Pick one from before training diverged.")
    missing = [k for k in ("kernel", "bias") if k not in found]
    if missing:
        raise CheckpointError(
            f"{where}: layer {layer!r} has no {missing[0]} (weights: {sorted(found)}); build_rcan's convs all have "
            "a kernel and a bias."
        )
    return found["kernel"], found["bias"]


def keras_kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
    """(k..., Cin, Cout) channels_last kernel -> (Cout, Cin, k...); both layouts are cross-correlations."""
    nd = kernel.ndim - 2
    return np.ascontiguousarray(kernel.transpose(nd + 1, nd, *range(nd)))


def convert_weights(f: h5py.File, parsed: ParsedRCAN, model: Any, where: str) -> dict[str, Any]:
    """The torch state dict for ``model``, filled conv by conv from the Keras file, shapes checked."""
    import torch

    from scopert.training.rcan.model import conv_layers_in_build_order

    weights = _member(f, "model_weights", h5py.Group)
    if weights is None:
        raise CheckpointError(f"{where}: the Keras file has no 'model_weights' group; it holds no weights.")
    targets = conv_layers_in_build_order(model)
    if len(targets) != len(parsed.conv_names):  # pragma: no cover - the parser guarantees this
        raise CheckpointError(f"{where}: {len(parsed.conv_names)} Keras convs for {len(targets)} model convs.")
    state = model.state_dict()
    for keras_name, (torch_name, module) in zip(parsed.conv_names, targets):
        kernel, bias = _read_conv_weights(weights, keras_name, where)
        w = module.weight
        expected = (*w.shape[2:], w.shape[1], w.shape[0])
        if kernel.shape != expected or bias.shape != (w.shape[0],):
            raise CheckpointError(
                f"{where}: layer {keras_name!r} has kernel {kernel.shape} and bias {bias.shape}, but the "
                f"architecture in model_config needs kernel {expected} and bias {(w.shape[0],)}. The weights do not "
                "belong to this model_config; the file is damaged or was edited."
            )
        state[f"{torch_name}.weight"] = torch.from_numpy(keras_kernel_to_torch(kernel))
        state[f"{torch_name}.bias"] = torch.from_numpy(bias.copy())
    return state


# ---- the importer --------------------------------------------------------------------------------

def import_keras_rcan(path: str | os.PathLike, out_dir: str | os.PathLike, name: str | None = None,
                      overwrite: bool = False) -> RunInfo:
    """Import a 3D-RCAN Keras model file, or the best one in a folder, into a ScopeRT run folder.

    The run folder is ``out_dir/name`` when ``name`` is given, else ``out_dir`` itself. An existing run
    folder is only replaced with ``overwrite=True``. The checkpoint is written before run.json, so a
    folder with a run.json always has its weights.
    """
    from scopert.training.rcan.model import FAMILY_NAME, build_model

    path = Path(path)
    if path.is_dir():
        path = select_best_checkpoint(path)
    elif not path.exists():
        raise CheckpointError(f"{path} does not exist. Pass a 3D-RCAN .hdf5 model file or the folder holding them.")
    folder = Path(out_dir) / name if name else Path(out_dir)
    if (folder / RUN_FILE).exists() and not overwrite:
        raise OutputError(f"{folder} is already a run folder. Choose another name or folder, or pass overwrite.")
    where = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CheckpointError(f"{where} is not a readable HDF5 file ({exc}). Pass a 3D-RCAN .hdf5 model file.") from None
    try:
        with f:
            keras_config = read_model_config(f, where)
            parsed = parse_rcan_config(keras_config, where)
            model = build_model(parsed.model_config)
            state = convert_weights(f, parsed, model, where)
            model.load_state_dict(state, strict=True)
            meta = {k: _text(f.attrs[k]) for k in ("keras_version", "backend") if k in f.attrs}
    except Exception as exc:
        if isinstance(exc, CheckpointError) or not _raised_in_h5py(exc):
            raise
        raise CheckpointError(f"{where}: the HDF5 file is damaged ({' '.join(str(exc).split())[:200]}). Copy it "
                              "again from its source, or pick another checkpoint.") from None

    match = CHECKPOINT_NAME.match(path.name)
    train_config: dict[str, Any] = {"imported_from": FORMAT, **meta}
    if match:
        train_config.update(epoch=int(match.group(1)), monitored_loss=float(match.group(2)))
    info = RunInfo(
        folder=folder,
        family=FAMILY_NAME,
        model_config=parsed.model_config,
        train_config=train_config,
        source={"path": str(path.resolve()), "sha256": sha256_file(path), "format": FORMAT},
    )
    save_checkpoint(info.best_checkpoint, {"model_state_dict": model.state_dict(), "epoch": train_config.get("epoch"),
                                           "val_loss": train_config.get("monitored_loss")})
    write_run_info(info)
    log.info("imported %s (%s) into %s", path.name, _summary(parsed.model_config), folder)
    return info


def _raised_in_h5py(exc: BaseException) -> bool:
    """Whether ``exc`` came out of h5py/libhdf5 (damaged file structure), not out of the parser above."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "h5py" in tb.tb_frame.f_code.co_filename


def _summary(cfg: dict[str, Any]) -> str:
    return (f"{cfg['ndim']}D RCAN, {cfg['num_channels']} channels, {cfg['num_residual_groups']} groups x "
            f"{cfg['num_residual_blocks']} blocks, reduction {cfg['channel_reduction']}")


def import_checkpoint(path: str | os.PathLike, out_dir: str | os.PathLike, *, config: str | os.PathLike | None = None,
                      model_name: str | None = None, frames: int | None = None, net_s: str | os.PathLike | None = None,
                      opt_txt: str | os.PathLike | None = None, trust: bool = False) -> Any:
    """The registry's importer (``scopert import rcan``): a 3D-RCAN Keras .hdf5 file or folder (best by the loss in its name)."""
    return import_keras_rcan(path, out_dir)
