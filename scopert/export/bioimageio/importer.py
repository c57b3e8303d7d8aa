"""A bioimage.io model package (zip, rdf.yaml or folder) -> one ScopeRT ONNX file with its ModelCard.

The description is read and validated by ``bioimageio.spec`` (its own errors are shown when it fails). Axes,
sizes, halo and scale become the card's axes, divisor, default tile, halo and scale. The first
data-dependent preprocessing step (``scale_range``, ``zero_mean_unit_variance``) becomes the card's
normalization; the fixed steps after it (``scale_linear``, ``fixed_zero_mean_unit_variance``, ``clip``) and
every fixed postprocessing step (``sigmoid``, ``softmax``, ``scale_linear``, ...) are appended to the ONNX
graph, so the runtime needs nothing new. A step neither can express is a clear error, never skipped.

Weights: ``onnx`` as they are; ``torchscript`` and ``pytorch_state_dict`` (the architecture loaded the way
bioimageio.core loads it) exported with ScopeRT's verified ONNX exporter. A package that ScopeRT wrote
carries its whole card under ``config.scopert`` and is read back without loss. Before anything is written,
the result is checked against the package's own test tensors with the package's own tolerance.

Imports numpy, onnx, onnxruntime, ``bioimageio.spec``/``bioimageio.core`` and (for torch weights) torch.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from scopert.card import ModelCard, Normalization, Source, TensorSpec
from scopert.errors import CardError, CheckpointError, ConfigError, InputError, OutputError, RunError
from scopert.export.bioimageio.package import AXIS_IDS, normalize_whole, require_bioimageio

log = logging.getLogger(__name__)

LETTERS = {v: k for k, v in AXIS_IDS.items()}
WEIGHT_PRIORITY = ("onnx", "torchscript", "pytorch_state_dict")
DEFAULT_TILE = {"z": 32, "y": 256, "x": 256}
STAT_STEPS = ("scale_range", "zero_mean_unit_variance")
DEFAULT_TOLERANCE = {"relative_tolerance": 1e-3, "absolute_tolerance": 1e-3, "mismatched_elements_per_million": 100}


@dataclass
class ImportResult:
    path: Path
    card: ModelCard
    weights: str  # the weights format used
    max_abs_error: float  # vs the package's test output
    max_rel_error: float
    mismatched_ppm: float
    notes: list[str] = field(default_factory=list)


# ---- public ------------------------------------------------------------------------------------------
def import_package(source: str | os.PathLike, out_path: str | os.PathLike, opset: int = 17,
                   weights_format: str | None = None, trust_package: bool = False) -> ImportResult:
    """Write ``out_path`` (.onnx) from a bioimage.io model package; nothing is written on any error.

    Offline by default: the description is validated without fetching its files, and only the weights entry that
    is used is read (a remote one is fetched then, and a failed fetch names the way out). ``weights_format``: one
    of WEIGHT_PRIORITY to use instead of the first available one. ``trust_package``: ``pytorch_state_dict`` weights
    come with an architecture file, Python code from the package that runs on import; it is loaded only then.
    """
    require_bioimageio()
    from scopert.checksum import sha256_file
    from scopert.export.onnx_export import write_onnx

    out_path = Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise OutputError(f"the import target {out_path} must end in .onnx; give a name such as model.onnx.")
    if not Path(source).exists() and is_remote(str(source)):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="scopert-zoo-") as tmp:
            local = fetch_package(str(source), Path(tmp))
            return import_package(local, out_path, opset, weights_format, trust_package)
    source = Path(source)
    descr = load_model_description(source)
    inp, out = _single_tensors(descr)
    fmt, weights = pick_weights(descr, weights_format)
    if fmt == "pytorch_state_dict" and not trust_package:
        raise CheckpointError(f"{source.name} has {fmt} weights, whose architecture ({_architecture(weights)}) is "
                              "Python code from the package that runs when it is loaded; pass --trust-package if "
                              "you trust its source, or choose other weights with --weights "
                              f"({', '.join(k for k, v in descr.weights if v is not None and k != fmt) or 'none'}).")
    sha_note = check_declared_sha256(source, fmt)
    card = card_from_description(descr, inp, out)
    proto, notes, weights_sha = _onnx_for(inp, fmt, weights, card, opset)
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value if proto.graph.input else 0
    if batch > 0:  # a graph made for one batch size (ONNX weights exported with a static shape)
        card.input.fixed["b"] = int(batch)
    notes += [sha_note] if sha_note else []
    pre_ops, post_ops = split_processing(inp, out)
    stored = (descr.config.model_extra or {}).get("scopert") if descr.config is not None else None
    if isinstance(stored, dict):  # written by ScopeRT: its card's normalization is the whole preprocessing
        pre_ops = []
    proto = append_steps(proto, pre_ops, card.input.axes, at_input=True)
    proto = append_steps(proto, post_ops, card.output.axes, at_input=False)
    card.input.name, card.output.name = proto.graph.input[0].name, proto.graph.output[0].name
    if isinstance(stored, dict):  # the card itself, lossless (checked against the test tensors below)
        card = _stored_card(stored, card, source)
    spatial_fixed = {a: n for a, n in card.input.fixed.items() if a in "zyx"}
    if spatial_fixed:  # the tiling that reproduces the package, recorded with the model
        rule = (f"Tiling: the graph takes exactly {spatial_fixed}; an image of that size runs whole (as the package's "
                "test output was made), a smaller one centred in one such window, a larger one in tiles of exactly "
                "that size with the halo inside.")
        notes.append(rule)
        card.notes = f"{card.notes} {rule}".strip()
    border = border_note(inp)
    if border:
        notes.append(border)
        card.notes = f"{card.notes} {border}".strip()
    # a zip identifies the whole package; a folder or yaml by the weights file that was used
    card.source = Source(path=str(source), sha256=sha256_file(source) if source.suffix.lower() == ".zip"
                         else weights_sha, format=f"bioimageio:{fmt}")
    card.verification = dict(card.verification)
    from scopert.export.sanitize import sanitize_model

    # what is verified is what is written: the sanitized graph, on every CPU engine
    proto, _ = sanitize_model(proto, out_path.name)
    check = compare_with_test_tensors(proto, descr, inp, out, card, fmt)
    card.verification["bioimageio_test_tensors"] = check
    card.validate(where=f"{source.name} (bioimage.io)")
    card.embed(proto)
    write_onnx(proto, out_path, sanitize=False)
    log.info("imported %s (%s weights) -> %s; vs test output max abs %.3g, rel %.3g", source, fmt, out_path,
             check["max_abs_error"], check["max_rel_error"])
    return ImportResult(out_path, card, fmt, check["max_abs_error"], check["max_rel_error"],
                        check["mismatched_ppm"], notes)


_ZOO_ID = re.compile(r"^[a-z]+-[a-z]+(/[0-9.]+)?$")  # e.g. affable-shark, affable-shark/1.1


def is_remote(text: str) -> bool:
    """A package named by URL or by its bioimage.io zoo id (both need the internet)."""
    return text.startswith(("http://", "https://")) or bool(_ZOO_ID.match(text))


def fetch_package(source: str, folder: Path) -> Path:
    """The package behind a zoo id or URL, saved as one local zip in ``folder`` (every file fetched once)."""
    from bioimageio.spec import InvalidDescr, load_description, save_bioimageio_package

    try:
        descr = load_description(source, format_version="discover", perform_io_checks=False)
        if isinstance(descr, InvalidDescr):
            raise InputError(f"{source} is not a valid bioimage.io package; check the id or URL.")
        return Path(save_bioimageio_package(descr, output_path=folder / "package.zip"))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - httpx, OS and pydantic errors of a remote description
        raise InputError(f"{source} cannot be fetched ({type(exc).__name__}: {str(exc)[:200]}); a zoo id or URL "
                         "needs the internet: download the package zip on a machine that has it and pass the "
                         "file.") from None


def load_model_description(source: Path) -> Any:
    """Validate and load; a failing description is an InputError that lists its own errors."""
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model import v0_5

    if not source.exists():
        raise InputError(f"{source} does not exist; pass a bioimage.io package (.zip), its rdf.yaml or its folder.")
    if source.is_file() and source.suffix.lower() == ".zip":
        check_zip(source)
    elif source.is_file() and source.suffix.lower() not in (".yaml", ".yml"):
        raise InputError(f"{source} is neither a .zip package nor an rdf.yaml; pass one of those or the folder.")
    # perform_io_checks=False: validate without fetching every file the description names (a weights entry
    # ScopeRT will not use may be a URL, and acquisition PCs are often offline); the one used is checked on read
    descr = load_description(source, format_version="latest", perform_io_checks=False)
    if isinstance(descr, InvalidDescr):  # a 0.4 description that the spec cannot convert as it is
        descr = _converted_from_0_4(source) or descr
    summary = descr.validation_summary
    if isinstance(descr, InvalidDescr) or summary.status == "failed":
        errors = [f"{'.'.join(map(str, e.loc)) or '(root)'}: {e.msg}" for e in summary.errors][:6]
        raise InputError(f"{source.name} is not a valid bioimage.io description ({len(summary.errors)} error(s)): "
                         + " | ".join(errors) + ". Fix the description (bioimageio validate) and retry.")
    if not isinstance(descr, v0_5.ModelDescr):
        raise InputError(f"{source.name} describes a {getattr(descr, 'type', '?')!r}, not a model (format 0.5); "
                         "pass a model package.")
    return descr


def check_zip(path: Path) -> None:
    """Refuse a zip that is not one, or that holds paths outside the package (``../``, absolute)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        raise InputError(f"{path} is not a zip file; pass a bioimage.io package zip (or its rdf.yaml).") from None
    for name in names:
        p = PurePosixPath(name.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
            raise InputError(f"{path} holds the entry {name!r}, a path outside the package; refusing to read it. "
                             "Re-create the package with bioimageio.spec's save_bioimageio_package.")


def check_declared_sha256(source: Path, fmt: str) -> str:
    """Whether the weights name their sha256 in the description as written; a note when they do not.

    A declared sha256 is checked when the file is read. Many zoo packages of format 0.4 declare none (the spec
    made it optional): then nothing proves the file is the one the author packaged, the card records the file's
    own sha256, and the note says so."""
    from bioimageio.spec.utils import open_bioimageio_yaml

    content = open_bioimageio_yaml(source).content
    entry = (content.get("weights") or {}).get(fmt) or {}
    if entry.get("sha256"):
        return ""
    note = (f"the {fmt} weights of {source.name} declare no sha256, so nothing proves the file is the one the "
            "author packaged; the card records the file's own sha256")
    log.warning("%s", note)
    return note


def _architecture(weights: Any) -> str:
    arch = getattr(weights, "architecture", None)
    src = getattr(arch, "source", None) or getattr(arch, "source_file", None)
    return f"{src}:{getattr(arch, 'callable', '?')}" if src is not None else str(arch)


def _converted_from_0_4(source: Path) -> Any:
    """A format 0.4 description that is valid as 0.4 but that bioimageio.spec refuses to convert: a fixed output
    shape with a halo (the zoo's own fixed-shape example). Its output follows its input one to one, so the output
    shape becomes a reference to the input (scale 1, offset 0), which the conversion accepts. None otherwise."""
    from bioimageio.spec import InvalidDescr, build_description, load_description
    from bioimageio.spec._internal.validation_context import ValidationContext
    from bioimageio.spec.utils import open_bioimageio_yaml

    old = load_description(source, format_version="discover", perform_io_checks=False)
    if isinstance(old, InvalidDescr) or str(getattr(old, "format_version", "")).split(".")[:2] != ["0", "4"]:
        return None
    opened = open_bioimageio_yaml(source)
    content = dict(opened.content)
    inputs = {t.get("name"): t for t in content.get("inputs", [])}
    outputs = []
    for tensor in content.get("outputs", []):
        tensor = dict(tensor)
        ref = next(iter(inputs.values()), None) if len(inputs) == 1 else None
        if isinstance(tensor.get("shape"), list) and tensor.get("halo") and ref is not None \
                and ref.get("shape") == tensor["shape"] and ref.get("axes") == tensor.get("axes"):
            n = len(tensor["shape"])
            tensor["shape"] = {"reference_tensor": ref["name"], "scale": [1.0] * n, "offset": [0.0] * n}
        outputs.append(tensor)
    content["outputs"] = outputs
    with ValidationContext(root=opened.original_root, file_name=opened.original_file_name,
                           perform_io_checks=False):
        descr = build_description(content, format_version="latest")
    if isinstance(descr, InvalidDescr):
        return None
    log.info("%s: format 0.4 description converted with its fixed output shape as a reference to the input",
             source.name)
    return descr


def border_note(inp: Any) -> str:
    """The runtime reflects at image borders; say so when the package pads otherwise (interior unaffected)."""
    mode = getattr(getattr(inp, "pad", None), "mode", None) or "symmetric"  # bioimageio.core's default
    if mode == "reflect":
        return ""
    return (f"The package pads image borders in {mode!r} mode; ScopeRT reflects, so outputs within the halo of the "
            "image border can differ from bioimageio.core's (the interior is identical).")


def pick_weights(descr: Any, wanted: str | None = None) -> tuple[str, Any]:
    """The first usable weights entry by WEIGHT_PRIORITY (or ``wanted``); the error names what the package has."""
    if wanted is not None and (wanted not in WEIGHT_PRIORITY or getattr(descr.weights, wanted, None) is None):
        have = [k for k, v in descr.weights if v is not None]
        raise ConfigError(f"weights format {wanted!r} is not usable in this package (it has: {', '.join(have)}); "
                          f"ScopeRT reads {', '.join(WEIGHT_PRIORITY)}.")
    for fmt in ([wanted] if wanted else WEIGHT_PRIORITY):
        entry = getattr(descr.weights, fmt, None)
        if entry is not None:
            return fmt, entry
    have = [k for k, v in descr.weights if v is not None]
    raise CheckpointError(f"the package has no weights ScopeRT can use (it has: {', '.join(have) or 'none'}); "
                          f"ScopeRT reads {', '.join(WEIGHT_PRIORITY)}. Ask the author for an ONNX export.")


# ---- description -> card --------------------------------------------------------------------------------
def _single_tensors(descr: Any) -> tuple[Any, Any]:
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise InputError(f"the model has {len(descr.inputs)} inputs and {len(descr.outputs)} outputs; ScopeRT runs "
                         "models with exactly one input and one output tensor.")
    return descr.inputs[0], descr.outputs[0]


def _letters(tensor: Any, what: str) -> str:
    letters = []
    for a in tensor.axes:
        if a.type == "batch":
            letters.append("b")
        elif a.type == "channel":
            letters.append("c")
        elif a.type == "space" and str(a.id) in "zyx" and len(str(a.id)) == 1:
            letters.append(str(a.id))
        elif a.type == "time" and "t" not in letters:  # a window of frames (2D+t: CNNT, a blind-spot window)
            letters.append("t")
        else:
            raise InputError(f"{what} axis {str(a.id)!r} of type {a.type!r} is not supported by ScopeRT (it tiles "
                             "batch, channel, one time and space axes z/y/x); this package cannot be imported.")
    axes = "".join(letters)
    if not axes.startswith("b"):
        raise InputError(f"{what} axes {axes!r} have no leading batch axis; ScopeRT needs one (b first).")
    return axes


def card_from_description(descr: Any, inp: Any, out: Any) -> ModelCard:
    """Axes, sizes, halo, scale and normalization of a description as a ModelCard."""
    from bioimageio.spec.model import v0_5 as bio

    in_axes, out_axes = _letters(inp, "input"), _letters(out, "output")
    in_by_id = {str(a.id): a for a in inp.axes}
    divisor, tile, halo, scale, fixed = {}, {}, {}, {}, {}
    time_window = _time_window(inp)
    for a in inp.axes:
        letter = LETTERS.get(str(a.id))
        if a.type != "space":
            continue
        if isinstance(a.size, int):  # the graph takes exactly this size: tiles of it, the halo inside
            fixed[letter], tile[letter] = a.size, a.size
        elif isinstance(a.size, bio.ParameterizedSize):
            if a.size.min % a.size.step:
                raise InputError(f"input axis {letter!r} takes sizes {a.size.min} + n*{a.size.step}; ScopeRT tiles "
                                 "in multiples of one divisor, so min must be a multiple of step.")
            divisor[letter] = a.size.step
            target = max(DEFAULT_TILE[letter], a.size.min)
            tile[letter] = a.size.min + -(-(target - a.size.min) // a.size.step) * a.size.step
        else:
            raise InputError(f"input axis {letter!r} has a {type(a.size).__name__} size; ScopeRT needs a fixed or "
                             "parameterized (min + n*step) input size.")
    for a in out.axes:
        if a.type != "space":
            continue
        letter = str(a.id)
        ref = in_by_id.get(str(getattr(a.size, "axis_id", letter)))
        if isinstance(a.size, bio.SizeReference):
            if a.size.offset:
                raise InputError(f"output axis {letter!r} has size offset {a.size.offset}; ScopeRT needs output = "
                                 "input x scale.")
            s = float(ref.scale) / float(a.scale)
        elif isinstance(a.size, int) and ref is not None and isinstance(ref.size, int) and a.size == ref.size:
            s = 1.0
        else:
            raise InputError(f"output axis {letter!r} size {a.size!r} is not tied to the input's; ScopeRT needs an "
                             "output size that follows the input (a size reference).")
        if s != 1.0:
            scale[letter] = s
        h = int(getattr(a, "halo", 0) or 0)
        if h:
            halo[letter] = int(np.ceil(h / s))
    for letter in (a for a in in_axes if a in "zyx"):
        halo.setdefault(letter, 0)
    if fixed and set(fixed) == {a for a in in_axes if a in "zyx"}:
        fixed["b"] = 1  # a graph for one shape (format 0.4 wrote it as 1x1x256x256) is traced for one image too
    channels_in = _channels(inp)
    card = ModelCard(
        family="bioimageio", name=str(descr.name),
        input=TensorSpec("input", in_axes, channels=channels_in, divisor=divisor, fixed=fixed,
                         time_window=time_window),
        output=TensorSpec("output", out_axes, channels=_channels(out), scale=scale,
                          time_window=time_window if "t" in out_axes else None),
        halo=halo,
        tile_invariant=any(halo.values()),  # a declared halo: crop stitching is what bioimage.io tools do
        normalization=normalization_from(inp, in_axes),
        default_tile=tile,
        notes=f"imported from bioimage.io: {descr.name}" + (f" (id {descr.id})" if descr.id else ""),
    )
    card.validate(where="bioimage.io description")
    return card


def _time_window(inp: Any) -> int | None:
    """Frames per window of a time input axis: its fixed size, or the smallest size it takes (2D+t)."""
    from bioimageio.spec.model import v0_5 as bio

    for a in inp.axes:
        if a.type == "time":
            if isinstance(a.size, int):
                return a.size
            if isinstance(a.size, bio.ParameterizedSize):
                return int(a.size.min)
            raise InputError(f"input time axis has a {type(a.size).__name__} size; ScopeRT needs a fixed or "
                             "parameterized (min + n*step) number of frames.")
    return None


def _channels(tensor: Any) -> int:
    for a in tensor.axes:
        if a.type == "channel":
            return len(a.channel_names)
    return 1


def normalization_from(inp: Any, axes: str) -> Normalization:
    """The first data-dependent preprocessing step as the card's normalization (per sample)."""
    steps = [p for p in inp.preprocessing if p.id != "ensure_dtype"]
    if not steps or steps[0].id not in STAT_STEPS:
        return Normalization(kind="none")
    step = steps[0]
    kw = step.kwargs
    letters = None if kw.axes is None else {LETTERS.get(str(a), str(a)) for a in kw.axes}
    joint = set(axes) - {"b"}
    per_frame = False
    if letters is not None and letters != joint:
        if letters == joint - {"c"} and "c" in axes and _channels(inp) == 1:
            pass  # one channel: over space == over everything
        else:
            raise InputError(f"preprocessing {step.id!r} over axes {sorted(letters)} (per channel or per plane) "
                             f"cannot be expressed by a ScopeRT card, which normalizes over {sorted(joint)} jointly.")
    if step.id == "scale_range":
        if getattr(kw, "reference_tensor", None) not in (None, inp.id):
            raise InputError("preprocessing 'scale_range' refers to another tensor; ScopeRT cannot express that.")
        return Normalization(kind="percentile", pmin=float(kw.min_percentile), pmax=float(kw.max_percentile),
                             eps=float(kw.eps))
    return Normalization(kind="zscore", per_frame=per_frame, eps=float(kw.eps))


def split_processing(inp: Any, out: Any) -> tuple[list[Any], list[Any]]:
    """The fixed steps to append to the graph: preprocessing after the normalization, all postprocessing."""
    pre = [p for p in inp.preprocessing if not _is_float_dtype(p)]
    if pre and pre[0].id in STAT_STEPS:
        pre = pre[1:]
    post = [p for p in out.postprocessing if not _is_float_dtype(p)]
    for where, steps in (("preprocessing", pre), ("postprocessing", post)):
        for p in steps:
            if p.id not in GRAPH_STEPS or not _fixed(p):
                raise InputError(f"{where} step {p.id!r} ({_kwargs_text(p)}) cannot be expressed by ScopeRT: only "
                                 f"one of {', '.join(STAT_STEPS)} as the first preprocessing step, then fixed steps "
                                 f"({', '.join(sorted(GRAPH_STEPS))}). This package cannot be imported.")
    return pre, post


def _is_float_dtype(step: Any) -> bool:
    if step.id != "ensure_dtype":
        return False
    if str(step.kwargs.dtype) != "float32":
        raise InputError(f"ensure_dtype {step.kwargs.dtype} is not supported: ScopeRT runs float32 models.")
    return True


def _fixed(step: Any) -> bool:
    kw = getattr(step, "kwargs", None)
    if step.id == "clip":
        return getattr(kw, "min_percentile", None) is None and getattr(kw, "max_percentile", None) is None
    return True


def _kwargs_text(step: Any) -> str:
    kw = getattr(step, "kwargs", None)
    return "" if kw is None else ", ".join(f"{k}={v}" for k, v in kw.model_dump().items() if v is not None)


# ---- graph editing ------------------------------------------------------------------------------------------
GRAPH_STEPS = {"scale_linear", "fixed_zero_mean_unit_variance", "clip", "sigmoid", "softmax"}


def append_steps(proto: Any, steps: list[Any], axes: str, at_input: bool) -> Any:
    """Insert fixed elementwise steps after the graph input (``at_input``) or before its output."""
    if not steps:
        return proto
    from onnx import helper, numpy_helper

    graph = proto.graph
    tensor = graph.input[0].name if at_input else graph.output[0].name
    prefix = "scopert_pre" if at_input else "scopert_post"
    inner = f"{prefix}_in"
    if at_input:  # the old input feeds the chain; the chain's end replaces it for the rest of the graph
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == tensor:
                    node.input[i] = f"{prefix}_out"
        for o in graph.output:
            if o.name == tensor:
                raise InputError("the model passes its input straight to its output; nothing to import.")
        current, final = tensor, f"{prefix}_out"
    else:
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == tensor:
                    node.output[i] = inner
        current, final = inner, tensor
    nodes, inits = [], []

    def const(name: str, values: Any, along: str | None) -> str:
        arr = np.asarray(values, np.float32)
        if along is not None:
            shape = [1] * len(axes)
            shape[axes.index(LETTERS.get(along, along))] = arr.size
            arr = arr.reshape(shape)
        inits.append(numpy_helper.from_array(arr, name))
        return name

    for k, step in enumerate(steps):
        kw = getattr(step, "kwargs", None)
        nxt = final if k == len(steps) - 1 else f"{prefix}_{k}"
        tag = f"{prefix}_{k}_{step.id}"
        along = str(kw.axis) if getattr(kw, "axis", None) is not None else None
        if along is not None and along != "channel":
            raise InputError(f"{step.id} along axis {along!r} varies over space; ScopeRT supports fixed steps per "
                             "channel only.")
        if step.id == "scale_linear":
            g = const(f"{tag}_gain", kw.gain, along)
            o = const(f"{tag}_offset", kw.offset, along)
            nodes += [helper.make_node("Mul", [current, g], [f"{tag}_m"]), helper.make_node("Add", [f"{tag}_m", o], [nxt])]
        elif step.id == "fixed_zero_mean_unit_variance":
            eps = 1e-6  # bioimageio.core's FixedZeroMeanUnitVariance: (x - mean) / (std + eps)
            m = const(f"{tag}_mean", kw.mean, along)
            s = const(f"{tag}_std", np.asarray(kw.std, np.float64) + eps, along)
            nodes += [helper.make_node("Sub", [current, m], [f"{tag}_s"]), helper.make_node("Div", [f"{tag}_s", s], [nxt])]
        elif step.id == "clip":
            lo = const(f"{tag}_min", -np.inf if kw.min is None else kw.min, None)
            hi = const(f"{tag}_max", np.inf if kw.max is None else kw.max, None)
            nodes.append(helper.make_node("Clip", [current, lo, hi], [nxt]))
        elif step.id == "sigmoid":
            nodes.append(helper.make_node("Sigmoid", [current], [nxt]))
        elif step.id == "softmax":
            axis = LETTERS.get(str(getattr(kw, "axis", "channel")), "c")
            nodes.append(helper.make_node("Softmax", [current], [nxt], axis=axes.index(axis)))
        current = nxt
    if at_input:
        old = list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes + old)
    else:
        graph.node.extend(nodes)
    graph.initializer.extend(inits)
    return proto


# ---- weights -> ONNX -----------------------------------------------------------------------------------------
def _read_weights(fmt: str, weights: Any) -> bytes:
    """The chosen weights file, read once (a remote source is fetched now, and only now; bioimageio.spec checks a
    declared sha256 as it reads); a failed fetch says so."""
    try:
        return weights.get_reader().read()
    except ValueError as exc:  # sha256 mismatch raised by bioimageio.spec's reader
        raise CheckpointError(f"the {fmt} weights do not match the package: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - httpx/OS errors of a remote source (no network, 404, ...)
        raise CheckpointError(f"the {fmt} weights ({weights.source}) cannot be read ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); download the file and point weights.{fmt}.source of the package "
                              "at it, or choose other weights with --weights.") from None


def _onnx_for(inp: Any, fmt: str, weights: Any, card: ModelCard, opset: int) -> tuple[Any, list[str], str]:
    """The graph, notes, and the sha256 of the weights file it came from."""
    import hashlib

    data = _read_weights(fmt, weights)
    sha = hashlib.sha256(data).hexdigest()
    if fmt == "onnx":
        return _read_onnx(weights, data), [], sha
    module = _torch_module(fmt, weights, data)
    notes = [f"{fmt} weights exported to ONNX opset {opset} by ScopeRT"]
    proto = _export_torch(module, card, export_shapes(inp, card), opset, _test_input_shape(inp), notes)
    return proto, notes, sha


def _read_onnx(weights: Any, data: bytes) -> Any:
    """The ONNX weights ``data`` (with external data, if any) as one ModelProto; the graph must take float32."""
    import tempfile

    import onnx

    if weights.external_data is not None:
        with tempfile.TemporaryDirectory() as tmp:
            main = Path(tmp) / "model.onnx"
            main.write_bytes(data)
            ext = weights.external_data  # the graph names its data file; bioimageio keeps that file name
            (Path(tmp) / PurePosixPath(str(ext.source)).name).write_bytes(ext.get_reader().read())
            proto = onnx.load(str(main), load_external_data=True)
    else:
        try:
            proto = onnx.load_from_string(data)
        except Exception as exc:
            raise CheckpointError(f"the ONNX weights cannot be parsed ({type(exc).__name__}: {exc}).") from None
    elem = proto.graph.input[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise CheckpointError(f"the ONNX model takes {onnx.TensorProto.DataType.Name(elem)} input; ScopeRT runs "
                              "float32 models.")
    return proto


def _torch_module(fmt: str, weights: Any, data: bytes) -> Any:
    """The torch module: torchscript from ``data``; a state dict loaded with its architecture as bioimageio.core
    loads it (which reads the file itself)."""
    try:
        import torch
    except ImportError:
        raise ConfigError(f"{fmt} weights need torch to convert them to ONNX: install the export and train extras "
                          "(pip install -c constraints.txt 'scopert[train,export]'), or use a package with ONNX "
                          "weights.") from None
    if fmt == "torchscript":
        import io

        try:
            return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
        except RuntimeError as exc:
            raise CheckpointError(f"the torchscript weights cannot be loaded ({exc}).") from None
    from bioimageio.core.backends.pytorch_backend import load_torch_model

    try:
        return load_torch_model(weights, load_state=True, devices=["cpu"]).eval()
    except (ValueError, RuntimeError, KeyError, ImportError) as exc:
        raise CheckpointError(f"the pytorch_state_dict weights cannot be loaded the way bioimageio.core loads them "
                              f"({type(exc).__name__}: {exc}).") from None


def _test_input_shape(inp: Any) -> tuple[int, ...] | None:
    from bioimageio.spec.utils import load_array

    try:
        return tuple(int(n) for n in load_array(inp.test_tensor).shape) if inp.test_tensor is not None else None
    except (ValueError, OSError):
        return None


def export_shapes(inp: Any, card: ModelCard) -> list[tuple[int, ...]]:
    """Two valid input shapes (batch 1 and 2, sizes ``min + n*step`` with n and n+1) for the ONNX check."""
    from bioimageio.spec.model import v0_5 as bio

    shapes = []
    for k, batch in enumerate((1, 2)):
        shape = []
        for a, letter in zip(inp.axes, card.input.axes):
            if letter == "b":
                shape.append(card.input.fixed.get("b", batch))
            elif letter == "c":
                shape.append(card.input.channels)
            elif isinstance(a.size, bio.ParameterizedSize):
                target = 16 if letter == "z" else 48
                n = max(0, -(-(target - a.size.min) // a.size.step))
                shape.append(a.size.min + (n + k) * a.size.step)
            else:
                shape.append(int(a.size))
        shapes.append(tuple(shape))
    return shapes


def _export_torch(module: Any, card: ModelCard, shapes: list[tuple[int, ...]], opset: int,
                  test_shape: tuple[int, ...] | None = None, notes: list[str] | None = None) -> Any:
    """ScopeRT's exporter: trace with dynamic axes, then ONNX Runtime vs PyTorch on two valid shapes.

    A graph that torch's TorchScript exporter cannot export with free sizes (instance norm after a concatenation
    loses its channel count) is exported for the package's test input shape instead: the card then fixes that
    shape, and the runtime runs tiles of exactly that size (the test input itself whole)."""
    from scopert.export.onnx_export import check_opset, trace_onnx, verify_against_torch

    check_opset(opset)
    try:
        proto = trace_onnx(module, card, shapes[0], opset, seed=0)
    except RunError as exc:
        if test_shape is None or card.input.fixed:
            raise
        spatial = {a: int(n) for a, n in zip(card.input.axes, test_shape) if a in "zyx"}
        note = (f"torch cannot export this graph with free sizes ({str(exc.__cause__ or exc)[:120]}); exported for "
                f"the test input's shape {spatial}: tiles of exactly that size")
        log.warning("%s", note)
        if notes is not None:
            notes.append(note)
        card.input.fixed.update(spatial, b=1)
        card.default_tile.update(spatial)
        fixed_shape = tuple(1 if a == "b" else int(n) for a, n in zip(card.input.axes, test_shape))
        shapes = [fixed_shape, fixed_shape]
        proto = trace_onnx(module, card, fixed_shape, opset, seed=0)
    # bioimage.io's default absolute tolerance per unit of the output range: a foreign network (a 3-level U-Net with
    # instance norm differs by 1.5e-4 of its range in float32); the package's test output is the real check, next
    atol = DEFAULT_TOLERANCE["absolute_tolerance"]
    card.verification = {"onnx_vs_torch": verify_against_torch(proto, module, card, shapes, atol, seed=0) | {"opset": opset}}
    return proto


# ---- checks -----------------------------------------------------------------------------------------------
def _stored_card(stored: dict, derived: ModelCard, source: Path) -> ModelCard:
    """The card ScopeRT stored in ``config.scopert``, if it agrees with the description's axes."""
    card = ModelCard.from_dict(stored, where=f"{source.name}:config.scopert")
    for what, a, b in (("input axes", card.input.axes, derived.input.axes),
                       ("output axes", card.output.axes, derived.output.axes)):
        if a != b:
            raise CardError(f"{source.name}: config.scopert says {what} {a!r}, the description {b!r}; the package "
                            "was edited after ScopeRT wrote it. Remove config.scopert or fix the description.")
    card.input.name, card.output.name = derived.input.name, derived.output.name
    return card


def tolerance(descr: Any, fmt: str) -> dict[str, float]:
    """The package's own reproducibility tolerance for ``fmt`` (bioimage.io defaults otherwise)."""
    cfg = descr.config.bioimageio if descr.config is not None else None
    for entry in getattr(cfg, "reproducibility_tolerance", ()) or ():
        if not entry.weights_formats or fmt in entry.weights_formats:
            return {"relative_tolerance": float(entry.relative_tolerance),
                    "absolute_tolerance": float(entry.absolute_tolerance),
                    "mismatched_elements_per_million": float(entry.mismatched_elements_per_million)}
    legacy = (getattr(cfg, "model_extra", None) or {}).get("test_kwargs", {}).get(fmt, {}) if cfg else {}
    out = dict(DEFAULT_TOLERANCE)
    if legacy:
        out["relative_tolerance"] = float(legacy.get("relative_tolerance", legacy.get("rtol", out["relative_tolerance"])))
        out["absolute_tolerance"] = float(legacy.get("absolute_tolerance", legacy.get("atol", out["absolute_tolerance"])))
    return out


def test_arrays(descr: Any, inp: Any, out: Any) -> tuple[np.ndarray, np.ndarray]:
    from bioimageio.spec.utils import load_array

    if inp.test_tensor is None or out.test_tensor is None:
        raise InputError("the package has no test tensors, so its weights cannot be checked; add test_tensor "
                         "(input and output .npy) to the description.")
    try:
        return np.asarray(load_array(inp.test_tensor)), np.asarray(load_array(out.test_tensor))
    except ValueError as exc:
        raise InputError(f"the package's test tensors cannot be read: {exc}") from None


def compare_with_test_tensors(proto: Any, descr: Any, inp: Any, out: Any, card: ModelCard,
                              fmt: str) -> dict[str, Any]:
    """Run the imported graph on the package's test input (untiled, normalized as the runtime does) and compare
    with its test output under the package's tolerance; RunError if it does not reproduce."""
    import onnxruntime as ort

    from scopert.export.onnx_export import openvino_runner

    x, expected = test_arrays(descr, inp, out)
    feed = normalize_whole(card, x.astype(np.float32))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    runs = {"onnxruntime": lambda: session.run(None, {session.get_inputs()[0].name: feed})[0]}
    openvino_run = openvino_runner(proto)
    if openvino_run is not None:
        runs["openvino"] = lambda: openvino_run(feed)
    tol = tolerance(descr, fmt)
    per_engine = {}
    for engine, run in runs.items():
        try:
            got = run()
        except Exception as exc:
            raise RunError(f"the imported model fails on {engine} with the package's own test input {x.shape} "
                           f"({type(exc).__name__}: {str(exc)[:300]}). Nothing was written.") from None
        if got.shape != expected.shape:
            raise RunError(f"the imported model returns shape {got.shape} on the test input; the package expects "
                           f"{expected.shape}. The description's axes do not match the weights.")
        diff = np.abs(got.astype(np.float64) - expected)
        bad = diff > tol["absolute_tolerance"] + tol["relative_tolerance"] * np.abs(expected)
        ppm = float(bad.sum()) / max(bad.size, 1) * 1e6
        per_engine[engine] = {"max_abs_error": float(diff.max()),
                              "max_rel_error": float((diff / np.maximum(np.abs(expected), 1e-12)).max()),
                              "mismatched_ppm": ppm}
        if ppm > tol["mismatched_elements_per_million"]:
            raise RunError(f"the imported model does not reproduce the package's test output on {engine}: {ppm:.0f} "
                           f"mismatched elements per million (allowed {tol['mismatched_elements_per_million']:.0f}), "
                           f"max abs error {per_engine[engine]['max_abs_error']:.3g}. Nothing was written.")
    # ONNX Runtime is the reference engine (the numbers reported); every engine passed the package's tolerance
    return {**per_engine["onnxruntime"], "engines": per_engine, "tolerance": tol, "test_input_shape": list(x.shape)}


