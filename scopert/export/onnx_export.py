"""Export a run folder's model to one self-contained ONNX file with its ModelCard, verified against PyTorch.

Steps: load the model (``scopert.training.common.runfolder.load_model``), trace ``family.export_module`` (or the
model) with the TorchScript exporter (``dynamo=False``: it needs no onnxscript and writes no external data)
with dynamic batch, time and spatial axes; ``onnx.checker`` (full check); the graph sanitized with Polygraphy
(``scopert.export.sanitize``: constants folded, unused nodes and initializers removed, shapes inferred; its
outputs checked equal to the unsanitized graph's); ONNX Runtime (CPU) vs PyTorch on the family's export shapes; the halo measured by ``receptive_field``; the card embedded in
``metadata_props``; the file written atomically (temporary name, then ``os.replace``).

Imports torch, onnx, onnxruntime, ``scopert.training`` and ``scopert.card``; must not import
``scopert.runtime``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from scopert.card import METADATA_KEY, ModelCard
from scopert.errors import CardError, ConfigError, InputError, OutputError, RunError
from scopert.export.receptive_field import RFResult, declared_receptive_field, measure_receptive_field

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # TensorRT 10.0+ and 11.x parse it; LayerNormalization is a single node from 17
MIN_OPSET = 13
TORCHSCRIPT_MAX_OPSET = 20  # torch's TorchScript exporter stops at 20; 21+ needs dynamo and onnxscript
DYNAMIC_AXES = "btzyx"
# Fields of the card that export measures or fills in itself; a family's card_fields may not set them.
EXPORT_OWNED = ("family", "name", "source", "training_config", "halo", "verification", "precision", "schema_version")
# Probe sizes across the measured axis: cheap, and wide enough that some ReLU path is alive.
PROBE_FRAMES = 2  # frames in the halo probe of a model whose output keeps the time axis
PROBE_CROSS = {2: 8, 3: 1}  # 2D: 8 wide, so stride-4 generators keep >1 pixel at the bottleneck


def export_run(
    run_folder: str | os.PathLike,
    out_path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    shapes: list[tuple[int, ...]] | None = None,
    atol: float = 1e-4,
    seed: int = 0,
) -> ModelCard:
    """Export the best checkpoint of ``run_folder`` to ``out_path`` (.onnx) and return the embedded card.

    ``shapes``: input shapes (with batch) for the ONNX-vs-PyTorch check; at least two, so that the dynamic
    axes are exercised (defaults to ``family.export_shapes``). Raises RunError if any output differs from
    PyTorch by more than ``atol``.
    """
    import torch

    from scopert.training.common.registry import get_family
    from scopert.training.common.runfolder import load_model

    out_path = _check_out_path(out_path)
    check_opset(opset)
    info, model = load_model(run_folder)
    family = get_family(info.family)
    cfg = info.model_config
    module = family.export_module(model, cfg) if family.export_module is not None else model
    module = module.float().eval()

    card = _base_card(family.card_fields(cfg), info, out_path)
    halo_hint = getattr(module, "halo_hint", None)  # a structural halo the export module declares: no (slow) probe
    shapes = [tuple(int(s) for s in shape) for shape in (shapes if shapes is not None else family.export_shapes(cfg))]
    _check_shapes(shapes, card)

    with torch.no_grad():
        proto = trace_onnx(module, card, shapes[0], opset, seed)
    proto, cleaned = _sanitize_checked(proto, card, shapes[0], seed, out_path.name, atol)
    verification = verify_against_torch(proto, module, card, shapes, atol, seed)
    verification["openvino"] = cleaned.pop("openvino")
    verification["sanitize"] = cleaned
    rf = _measure(module, card, seed) if halo_hint is None else declared_receptive_field(halo_hint, card.input.axes)

    card.halo = dict(rf.halo)
    if card.tile_invariant and rf.global_dependency:
        log.warning(
            "family %r declares the model tile-invariant, but the measured response is global along %s; "
            "recording tile_invariant=False (the runtime will blend tiles)", info.family, rf.global_axes,
        )
        card.tile_invariant = False
    elif not card.tile_invariant and not rf.global_dependency:
        log.info("family %r declares the model tile-variant; the probe found no global dependency (kept False)",
                 info.family)
    verification.update(opset=opset, exporter="dynamo" if opset > TORCHSCRIPT_MAX_OPSET else "torchscript")
    verification["receptive_field"] = rf.to_dict()
    card.verification = {"onnx_vs_torch": verification}
    activations = largest_activation(proto, card, shapes[0])
    if activations:
        card.verification["activations"] = activations
    card.validate(where=str(out_path))

    card.embed(proto)
    write_onnx(proto, out_path, sanitize=False)  # sanitized above, before the verification
    log.info("exported %s: max |onnx - torch| = %.3g, halo %s, tile_invariant=%s", out_path,
             verification["max_abs_error"], card.halo, card.tile_invariant)
    return card


def largest_activation(proto: Any, card: ModelCard, shape: tuple[int, ...]) -> dict[str, Any] | None:
    """The bytes of the largest activation per input voxel, from ONNX shape inference at ``shape``: what the
    runtime sizes tiles by. A U-Net's widest filter bank lives at 1/8 or 1/16 of the resolution, so sizing by
    the widest bank (the fallback for cards without this) overestimates its memory 2-3x and makes tiles small.
    None when shapes cannot be inferred."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    del model.graph.value_info[:]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, size in zip(dims, shape):
        d.dim_value = int(size)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    except Exception as exc:  # noqa: BLE001 - an estimate only; the runtime falls back to the widest bank
        log.info("no activation sizes from shape inference (%s); the runtime sizes tiles by the widest bank", exc)
        return None
    voxels = math.prod(int(n) for n, ax in zip(shape, card.input.axes) if ax != "c")  # the batch counts too
    largest, where = 0, ""
    for value in list(inferred.value_info) + list(inferred.output):
        t = value.type.tensor_type
        sizes = [d.dim_value for d in t.shape.dim]
        if not sizes or any(n <= 0 for n in sizes) or not t.elem_type:
            continue
        per_voxel = math.prod(sizes) * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize / voxels
        if per_voxel > largest:
            largest, where = per_voxel, value.name
    if not largest:
        return None
    return {"largest_bytes_per_voxel": math.ceil(largest), "tensor": where, "input_shape": list(shape)}


def read_card(onnx_path: str | os.PathLike) -> ModelCard:
    """The ModelCard embedded in an ONNX file (export side; the runtime reads it through onnxruntime)."""
    import onnx

    from scopert.runtime.onnx_file import check_external_data

    path = Path(onnx_path)
    if not path.is_file():
        raise InputError(f"{path} does not exist. Give the path of an .onnx file made by `scopert export`.")
    check_external_data(path)  # external data only from inside the model's folder
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, onnx may raise others
        raise InputError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc}). Re-export it.") from None
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return ModelCard.from_json(prop.value, where=str(path))
    raise CardError(f"{path} has no ScopeRT card ({METADATA_KEY!r} metadata). Export it with `scopert export`.")


# ---- card ---------------------------------------------------------------------------------------------
def _base_card(fields: dict[str, Any], info: Any, out_path: Path) -> ModelCard:
    """The card from the family's fields and the run folder; halo and verification come later."""
    from scopert.checksum import sha256_file

    data = {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in dict(fields).items()}
    owned = sorted(set(data) & set(EXPORT_OWNED))
    if owned:
        raise ConfigError(
            f"family {info.family!r}: card_fields sets {owned[0]!r}, which export measures or fills in itself. "
            "Remove it from the family's card_fields."
        )
    for key in ("input", "output"):
        if key not in data:
            raise ConfigError(
                f"family {info.family!r}: card_fields has no {key!r} TensorSpec; the family must give it."
            )
    source = {k: str(v) for k, v in (info.source or {}).items() if k in ("path", "sha256", "format")}
    if not source.get("sha256"):
        ckpt = info.best_checkpoint
        source = {"path": source.get("path") or str(ckpt), "sha256": sha256_file(ckpt),
                  "format": source.get("format") or "scopert-run"}
    data.update(
        family=info.family,
        name=out_path.name[: -len(".onnx")],
        source=source,
        training_config={"model": info.model_config, "train": info.train_config},
    )
    return ModelCard.from_dict(data, where=f"family {info.family!r} card_fields")


# ---- checks -------------------------------------------------------------------------------------------
def _check_out_path(out_path: str | os.PathLike) -> Path:
    path = Path(out_path)
    if path.suffix.lower() != ".onnx":
        raise OutputError(f"the export target {path} must end in .onnx; give a file name such as model.onnx.")
    if path.is_dir():
        raise OutputError(f"the export target {path} is a folder; give a file name such as {path / 'model.onnx'}.")
    return path


def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ConfigError(
            f"opset must be an integer >= {MIN_OPSET}, got {opset!r}. Use 17 (TensorRT 10/11 parse opsets 9-24)."
        )
    if opset > TORCHSCRIPT_MAX_OPSET:
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"opset {opset} needs torch's dynamo exporter, which needs the onnxscript package. "
                f"Install it (pip install onnxscript) or use an opset <= {TORCHSCRIPT_MAX_OPSET}."
            ) from None


def _check_shapes(shapes: list[tuple[int, ...]], card: ModelCard) -> None:
    """Each verification shape must fit the card's axes, channels, divisor and time window."""
    if len(shapes) < 2:
        raise ConfigError(
            f"export needs at least two verification shapes to check the dynamic axes, got {len(shapes)}. "
            "Pass two or more input shapes (with batch)."
        )
    spec = card.input
    for shape in shapes:
        if len(shape) != len(spec.axes):
            raise ConfigError(f"verification shape {shape} has {len(shape)} axes; the input axes are {spec.axes!r}.")
        dims = dict(zip(spec.axes, shape))
        if any(s < 1 for s in shape):
            raise ConfigError(f"verification shape {shape} has a size < 1.")
        if "c" in dims and dims["c"] != spec.channels:
            raise ConfigError(f"verification shape {shape} has {dims['c']} channels; the model takes {spec.channels}.")
        for ax, d in spec.divisor.items():
            if dims[ax] % int(d):
                raise ConfigError(f"verification shape {shape}: axis {ax!r} = {dims[ax]} is not a multiple of {d}.")


# ---- export ------------------------------------------------------------------------------------------
def trace_onnx(module: Any, card: ModelCard, shape: tuple[int, ...], opset: int, seed: int) -> Any:
    """Trace to ONNX in memory and run the full checker; returns the ModelProto."""
    import onnx
    import torch

    x = torch.from_numpy(_sample(card, shape, seed))
    in_name, out_name = card.input.name, card.output.name
    free = "".join(a for a in DYNAMIC_AXES if a not in card.input.fixed)  # a fixed-shape graph stays fixed there
    dynamic = {
        in_name: {i: a for i, a in enumerate(card.input.axes) if a in free},
        out_name: {i: _out_dim_name(card, a) for i, a in enumerate(card.output.axes) if a in free},
    }
    buffer = io.BytesIO()
    kwargs: dict[str, Any] = dict(
        input_names=[in_name], output_names=[out_name], opset_version=opset, dynamic_axes=dynamic,
        do_constant_folding=True,
    )
    if opset > TORCHSCRIPT_MAX_OPSET:
        kwargs.update(dynamo=True, external_data=False)  # needs onnxscript, checked in check_opset
    else:
        kwargs.update(dynamo=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = torch.onnx.export(module, (x,), buffer if not kwargs["dynamo"] else None, **kwargs)
        except Exception as exc:
            raise RunError(
                f"torch.onnx.export failed at opset {opset} ({type(exc).__name__}: {exc}). An operator may need a "
                "newer opset (try --opset 18..20), or the family's export_module must replace it."
            ) from exc
    for w in caught:
        if issubclass(w.category, DeprecationWarning):
            log.debug("exporter: %s", w.message)
        else:  # e.g. TracerWarning: shape-dependent Python code; the multi-shape check below catches real damage
            log.warning("exporter: %s", w.message)
    if kwargs["dynamo"]:
        proto = result.model_proto
    else:
        proto = onnx.load_from_string(buffer.getvalue())
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise RunError(f"the exported ONNX graph fails onnx.checker ({exc}). Try another opset.") from exc
    return proto


def _out_dim_name(card: ModelCard, axis: str) -> str:
    """Output dims share the input's name unless the model rescales that axis (then they differ)."""
    if float(card.output.scale.get(axis, 1.0)) != 1.0:
        return f"{axis}_out"
    return axis


def _input_range(card: ModelCard) -> tuple[float, float]:
    """The model's normalized input range: [-1, 1] for symmetric min-max, else [0, 1]."""
    n = card.normalization
    return (-1.0, 1.0) if n.kind == "minmax" and n.symmetric else (0.0, 1.0)


def _sample(card: ModelCard, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A reproducible uniform random input in the model's normalized range."""
    rng = np.random.default_rng([seed, *shape])
    lo, hi = _input_range(card)
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


# ---- verification -------------------------------------------------------------------------------------
def verify_against_torch(proto: Any, module: Any, card: ModelCard, shapes: list[tuple[int, ...]], atol: float,
            seed: int) -> dict[str, Any]:
    """Run ONNX Runtime (CPU) and PyTorch on every shape; fail if any max abs error exceeds ``atol``."""
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    per_shape = []
    for shape in shapes:
        x = _sample(card, shape, seed)
        with torch.no_grad():
            ref = module(torch.from_numpy(x))
        ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).float().numpy()
        got = session.run([card.output.name], {card.input.name: x})[0]
        if got.shape != ref.shape:
            raise RunError(
                f"ONNX output shape {got.shape} differs from PyTorch {ref.shape} for input {shape}: the traced graph "
                "froze a shape. Make the model's forward free of Python arithmetic on tensor sizes."
            )
        if not np.all(np.isfinite(ref)):
            raise RunError(f"PyTorch produced NaN/Inf for a random input of shape {shape}; the weights are damaged.")
        err = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
        if not np.isfinite(err):
            err = float("inf")
        span = float(np.ptp(ref)) if ref.size else 0.0
        per_shape.append({"shape": list(shape), "max_abs_error": err, "max_abs_output": float(np.max(np.abs(ref))),
                          "tolerance": atol * max(1.0, span)})
    # atol per unit of the output's range: float32 rounding grows with the values a network produces
    worst = max(per_shape, key=lambda s: s["max_abs_error"] / s["tolerance"])
    if not worst["max_abs_error"] <= worst["tolerance"]:
        raise RunError(
            f"ONNX Runtime differs from PyTorch by {worst['max_abs_error']:.3g} (> {worst['tolerance']:.3g}: atol "
            f"{atol:g} of the output range) for input shape {tuple(worst['shape'])}. The graph is wrong at this "
            "shape (shape-dependent code in forward?) or numerically fragile; fix the model's export_module, or "
            "raise atol if the error is acceptable."
        )
    return {
        "max_abs_error": max(s["max_abs_error"] for s in per_shape),
        "atol": atol,
        "tolerance": worst["tolerance"],
        "shapes": per_shape,
        "input_range": list(_input_range(card)),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }


def _measure(module: Any, card: ModelCard, seed: int) -> RFResult:
    """Measure the halo on a probe that is small across each measured axis (see receptive_field)."""
    spec = card.input
    ndim = len(spec.spatial_axes)
    probe = []
    for ax in spec.axes:
        if ax == "b":
            probe.append(1)
        elif ax == "c":
            probe.append(spec.channels)
        elif ax == "t":  # frames in = frames out (CNNT): two frames carry the spatial halo at 1/8 of the memory of
            # a 16-frame window (the default CNNT's probe needed > 24 GB); a window consumed whole keeps its size
            window = int(spec.time_window or 1)
            probe.append(min(window, PROBE_FRAMES) if "t" in card.output.axes else window)
        else:
            d = int(spec.divisor.get(ax, 1))
            probe.append(-(-PROBE_CROSS.get(ndim, 1) // d) * d)
    return measure_receptive_field(module, tuple(probe), spec.axes, output_axes=card.output.axes,
                                   divisor=spec.divisor, seed=seed)


# ---- sanitizing ----------------------------------------------------------------------------------------
def _sanitize_checked(proto: Any, card: ModelCard, shape: tuple[int, ...], seed: int, where: str,
                      atol: float = 1e-4) -> tuple[Any, dict]:
    """The Polygraphy-sanitized graph, and its report with the max |after - before| on one input.

    Folding evaluates the same float32 ops, but in another order (a folded constant is rounded once where the
    graph rounded it at each step), so outputs may differ by rounding. The check takes the export's own
    tolerance, ``atol`` per unit of the output's range (as the ONNX-vs-PyTorch check): only a graph that folding
    really changed fails."""
    from scopert.export.sanitize import sanitize_model

    clean, report = sanitize_model(proto, where)
    x = _sample(card, shape, seed)
    before, after = (_ort_run(p, card, x) for p in (proto, clean))
    change = float(np.max(np.abs(after.astype(np.float64) - before))) if before.size else 0.0
    span = float(np.ptp(before)) if before.size else 0.0
    tol = atol * max(1.0, span)
    if not change <= tol:
        raise RunError(f"sanitizing {where} changed its output by {change:.3g} (> {tol:.3g}, atol {atol:g} of the "
                       f"output range {span:.3g}); report this with the model (the unsanitized graph is correct, "
                       "Polygraphy's folding is not).")
    openvino = check_on_openvino(clean, x, after, atol, where)  # the written graph runs on every CPU engine
    return clean, {**report.to_dict(), "max_abs_change": change, "tolerance": tol, "shape": list(shape),
                   "openvino": openvino}


def openvino_runner(proto: Any) -> Any:
    """A call ``run(x)`` of ``proto`` on OpenVINO's CPU plugin in f32 (None where OpenVINO is not installed)."""
    try:
        import openvino as ov
    except ImportError:
        return None

    def run(x: np.ndarray) -> np.ndarray:  # read from memory: nothing is written to disk for a check
        core = ov.Core()
        compiled = core.compile_model(core.read_model(proto.SerializeToString(), b""), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32"})
        return np.asarray(compiled([x])[compiled.output(0)])

    return run


def check_on_openvino(proto: Any, x: np.ndarray, ref: np.ndarray, atol: float, where: str) -> dict[str, Any]:
    """The graph that is written runs on OpenVINO too and agrees with ONNX Runtime's ``ref`` on ``x`` (atol per unit
    of the output range, loosened 10x: another engine's kernels); a graph only one engine can run fails here."""
    run = openvino_runner(proto)
    if run is None:
        return {"checked": False, "reason": "openvino is not installed"}
    try:
        got = run(x)
    except Exception as exc:  # noqa: BLE001 - OpenVINO's conversion and compile errors have many types
        raise RunError(f"{where} runs on ONNX Runtime but not on OpenVINO ({type(exc).__name__}: "
                       f"{str(exc)[:300]}); report it with the model, or run it with --backend ort.") from None
    err = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
    tol = 10 * atol * max(1.0, float(np.ptp(ref)) if ref.size else 0.0)
    if got.shape != ref.shape or not err <= tol:
        raise RunError(f"{where} gives other numbers on OpenVINO than on ONNX Runtime (max abs {err:.3g} > {tol:.3g}, "
                       f"shapes {got.shape} / {ref.shape}); report it with the model, or run it with --backend ort.")
    return {"checked": True, "max_abs_vs_ort": err, "tolerance": tol}


def _ort_run(proto: Any, card: ModelCard, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run([card.output.name], {card.input.name: x})[0]


# ---- writing -------------------------------------------------------------------------------------------
def write_onnx(proto: Any, out_path: Path, sanitize: bool = True) -> None:
    """Serialize to ``<out>.tmp`` and rename: an interrupted export never leaves half a model.

    ``sanitize``: clean the graph with Polygraphy first (every ONNX ``export`` writes loads in ONNX Runtime
    without a warning); a graph it cannot sanitize is an InputError and nothing is written."""
    if sanitize:
        from scopert.export.sanitize import sanitize_model

        proto, _ = sanitize_model(proto, out_path.name)
    try:
        data = proto.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GB
        raise RunError(f"the ONNX model is too large for one file ({exc}).") from exc
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, out_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {out_path} ({exc.strerror or exc}). Free space in "
                          f"{out_path.absolute().parent} or choose a writable folder with room for it.") from exc
    except BaseException:  # Ctrl-C or SIGTERM mid-write: no half model, no temporary
        tmp.unlink(missing_ok=True)
        raise
