"""ScopeRT ONNX + ModelCard -> a bioimage.io model package (format 0.5.x), built with ``bioimageio.spec``.

The package is a second serialization of the card: axes and sizes (``min + n*step`` from the divisor and the
smallest valid tile), output halo and scale, preprocessing from the card's normalization, test tensors from a
real tile, a cover (raw | output), a README with a ``# Validation`` section, the seed paper as citation, and
the whole card under ``config.scopert`` so that ``scopert import bioimageio`` reads it back without loss.
``bioimageio.core``'s ``test_model`` runs before the zip is written; a failing package is never written.

Imports numpy, onnx/onnxruntime, ``bioimageio.spec``/``bioimageio.core`` (the ``bioimageio`` extra) and the
runtime's normalization; never torch.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scopert.card import ModelCard
from scopert.errors import CardError, ConfigError, InputError, OutputError, RunError
from scopert.training.common.registry import FAMILIES, Seed

log = logging.getLogger(__name__)

# bioimage.io axis ids for the card's axis letters.
AXIS_IDS = {"b": "batch", "c": "channel", "t": "time", "z": "z", "y": "y", "x": "x"}
# Test tiles: large enough to show structure, small enough for a light package (per-axis caps).
TEST_TILE_CAP = {"t": 64, "z": 32, "y": 256, "x": 256}
REPRODUCIBILITY = {"relative_tolerance": 1e-3, "absolute_tolerance": 1e-4, "mismatched_elements_per_million": 100}


SEEDS = {name: entry.seed for name, entry in FAMILIES.items()}
SCOPERT_CITE = Seed("ScopeRT: microscopy restoration networks from PyTorch training to ONNX/TensorRT engines and "
                    "tiled, streamed inference.", url="https://github.com/scopert/scopert")


@dataclass
class PackageOptions:
    """What the user may say about the package; everything has a default."""

    name: str | None = None
    description: str | None = None
    authors: Sequence[str] = ()
    license: str = "CC-BY-4.0"
    cite_text: str | None = None
    cite_doi: str | None = None
    tags: Sequence[str] = ()


@dataclass
class PackageResult:
    path: Path
    status: str  # load_description on the written zip: 'passed' or 'valid-format'
    test_model: str  # bioimageio.core test_model: 'passed' (a failure raises before writing)
    test_input_shape: tuple[int, ...]
    warnings: list[str] = field(default_factory=list)


def require_bioimageio() -> None:
    """Fail clearly when the optional extra is missing."""
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise ConfigError(
            "bioimage.io packages need the bioimageio extra: pip install -c constraints.txt 'scopert[bioimageio]'."
        ) from None


# ---- public ------------------------------------------------------------------------------------------
def package_model(onnx_path: str | os.PathLike, out_path: str | os.PathLike,
                  sample: str | os.PathLike | None = None, options: PackageOptions | None = None) -> PackageResult:
    """Write ``out_path`` (.zip), a bioimage.io package of a ScopeRT ONNX model, after test_model passes.

    ``sample``: a real image (TIFF/NPY/NPZ/HDF5 'raw') for the test tensors and the cover; default: the
    training data named in the card. Nothing is written unless validation and ``test_model`` pass.
    """
    require_bioimageio()
    from bioimageio.core import test_model
    from bioimageio.spec import load_description, save_bioimageio_package

    from scopert.export.onnx_export import read_card

    options = options or PackageOptions()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if out_path.suffix.lower() != ".zip":
        raise OutputError(f"the package target {out_path} must end in .zip; give a name such as model.bioimageio.zip.")
    if out_path.is_dir():
        raise OutputError(f"the package target {out_path} is a folder; give a file name such as model.zip.")
    card = grid_halo(read_card(onnx_path))
    check_packable(card)
    raw = read_sample(card, sample)
    notes: list[str] = []
    test_in = test_tile(card, raw, notes)
    test_out = reference_output(onnx_path, card, test_in)

    with tempfile.TemporaryDirectory(prefix="scopert-bioimageio-") as tmp:
        folder = Path(tmp)
        np.save(folder / "test_input.npy", test_in)
        np.save(folder / "test_output.npy", test_out)
        write_samples(folder, test_in, test_out)
        write_cover(folder / "cover.png", card, test_in, test_out)
        readme = folder / "README.md"
        readme.write_text(readme_text(card, options, test_in.shape, None))
        descr = describe(card, onnx_path, folder, options)
        summary = test_model(descr, weight_format="onnx")
        if summary.status != "passed":
            raise RunError(f"bioimageio.core test_model failed on the package of {onnx_path.name}: "
                           f"{_summary_errors(summary)}. The package was not written.")
        readme.write_text(readme_text(card, options, test_in.shape, summary))
        descr = describe(card, onnx_path, folder, options)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp_zip = out_path.with_name(out_path.name + ".tmp.zip")
        try:
            save_bioimageio_package(descr, output_path=tmp_zip, weights_priority_order=["onnx"])
            loaded = load_description(tmp_zip)
            status = loaded.validation_summary.status
            if status not in ("passed", "valid-format"):
                raise RunError(f"the written package does not validate ({_summary_errors(loaded.validation_summary)}).")
            os.replace(tmp_zip, out_path)
        except OSError as exc:
            raise OutputError(f"cannot write {out_path} ({exc.strerror}). Choose a writable folder.") from None
        finally:
            tmp_zip.unlink(missing_ok=True)
    warnings = notes + [str(w.msg) for w in loaded.validation_summary.warnings]
    log.info("wrote %s: load_description %s, test_model %s", out_path, status, summary.status)
    return PackageResult(out_path, status, summary.status, tuple(test_in.shape), warnings)


def check_packable(card: ModelCard) -> None:
    """Refuse what a bioimage.io consumer could not reproduce (a runtime step outside the graph)."""
    kind = card.postprocess.get("kind")
    if kind:
        raise CardError(
            f"the card's postprocess {kind!r} runs in ScopeRT's runtime outside the ONNX graph and has no bioimage.io "
            "equivalent, so Fiji/napari/bioimageio.core would return different outputs. Package a family whose "
            "output the graph produces by itself."
        )
    if len(card.input.spatial_axes) < 1 or card.input.axes[0] != "b":
        raise CardError(f"the card's input axes {card.input.axes!r} need a leading batch axis for bioimage.io.")


# ---- card -> description -------------------------------------------------------------------------------
def grid_halo(card: ModelCard) -> ModelCard:
    """The card with each halo rounded up so that ``2*halo`` is a multiple of the divisor.

    bioimage.io tools place blocks every ``block - 2*halo`` voxels; the runtime keeps tile cores on the divisor
    grid. With ``2*halo`` on the grid both place the same blocks (so results agree block for block), and a
    downsampling model is never cut off its pooling grid. A larger halo only adds context.
    """
    halo = {}
    for ax, h in card.halo.items():
        d = int(card.input.divisor.get(ax, 1))
        h = int(h)
        while (2 * h) % d:
            h += 1
        halo[ax] = h
    if halo != card.halo:
        card.notes = (f"{card.notes} Packaged for bioimage.io with halo {halo} (measured {card.halo}, rounded up "
                      "so that 2*halo is a multiple of the divisor).").strip()
        card.halo = halo
    return card


def size_parameters(card: ModelCard, axis: str) -> tuple[int, int]:
    """(min, step) of a tiled input axis: the smallest tile the runtime accepts, then the divisor."""
    step = int(card.input.divisor.get(axis, 1))
    halo = int(card.halo.get(axis, 0))
    smallest = max(2 * halo + step, 8 if axis in "yx" else 1)
    return -(-smallest // step) * step, step


def input_axes(card: ModelCard) -> list[Any]:
    from bioimageio.spec.model import v0_5 as bio

    spec, out = card.input, []
    for ax in spec.axes:
        if ax == "b":
            out.append(bio.BatchAxis())
        elif ax == "c":
            out.append(bio.ChannelAxis(channel_names=_channel_names(spec.channels, "channel")))
        elif ax == "t" and "t" not in card.output.axes:  # a window of frames in, one frame out
            out.append(bio.TimeInputAxis(size=int(spec.time_window or 1)))
        else:
            lo, step = size_parameters(card, ax)
            if ax == "t":
                lo = max(lo, int(spec.time_window or 1))
            size = bio.ParameterizedSize(min=lo, step=step)
            cls = bio.TimeInputAxis if ax == "t" else bio.SpaceInputAxis
            out.append(cls(size=size) if ax == "t" else cls(id=bio.AxisId(ax), size=size))
    return out


def output_axes(card: ModelCard) -> list[Any]:
    from bioimageio.spec.model import v0_5 as bio

    spec, out = card.output, []
    for ax in spec.axes:
        if ax == "b":
            out.append(bio.BatchAxis())
        elif ax == "c":
            out.append(bio.ChannelAxis(channel_names=_channel_names(spec.channels, "output")))
        else:
            s = float(spec.scale.get(ax, 1.0))
            ref = bio.SizeReference(tensor_id=bio.TensorId("input"), axis_id=bio.AxisId(AXIS_IDS[ax]))
            halo = int(card.halo.get(ax, 0)) * s
            if abs(halo - round(halo)) > 1e-9:
                raise CardError(f"halo {card.halo[ax]} on axis {ax!r} times the output scale {s} is not an integer; "
                                "bioimage.io needs a whole number of output voxels.")
            kwargs: dict[str, Any] = {"size": ref, "scale": 1.0 / s}
            if ax != "t":
                kwargs["id"] = bio.AxisId(ax)
            if round(halo) >= 1:
                cls = bio.TimeOutputAxisWithHalo if ax == "t" else bio.SpaceOutputAxisWithHalo
                kwargs["halo"] = int(round(halo))
            else:
                cls = bio.TimeOutputAxis if ax == "t" else bio.SpaceOutputAxis
            out.append(cls(**kwargs))
    return out


def preprocessing(card: ModelCard) -> list[Any]:
    """The card's normalization as bioimage.io preprocessing (statistics per sample, as the runtime does)."""
    from bioimageio.spec.model import v0_5 as bio

    n = card.normalization
    # ScopeRT fits one map over the whole input (all channels together); per frame over each frame.
    stat_axes = [bio.AxisId(AXIS_IDS[a]) for a in card.input.axes if a != "b" and not (n.per_frame and a == "t")]
    low = -1.0 if n.symmetric else 0.0
    steps: list[Any] = []
    if n.kind == "none":
        return steps
    if n.kind == "percentile":
        steps.append(bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(
            axes=stat_axes, min_percentile=float(n.pmin), max_percentile=float(n.pmax), eps=float(n.eps))))
        low = 0.0
    elif n.kind == "zscore":
        steps.append(bio.ZeroMeanUnitVarianceDescr(kwargs=bio.ZeroMeanUnitVarianceKwargs(axes=stat_axes)))
    elif n.kind == "minmax":
        steps.append(bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(
            axes=stat_axes, min_percentile=0.0, max_percentile=100.0, eps=1e-6)))
        if n.symmetric:
            steps.append(bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=2.0, offset=-1.0)))
    elif n.kind == "fixed":
        steps.append(bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(
            gain=1.0 / float(n.scale), offset=-float(n.offset) / float(n.scale))))
    else:  # pragma: no cover - the card validates its kind
        raise CardError(f"normalization kind {n.kind!r} has no bioimage.io preprocessing.")
    if n.clip and n.kind != "zscore":
        steps.append(bio.ClipDescr(kwargs=bio.ClipKwargs(min=low, max=1.0)))
    return steps


def describe(card: ModelCard, onnx_path: Path, folder: Path, options: PackageOptions) -> Any:
    """The ``ModelDescr`` for a card, its ONNX file and the test/cover/README files in ``folder``."""
    from bioimageio.spec.model import v0_5 as bio

    seed = SEEDS.get(card.family)
    cites = []
    if options.cite_text or options.cite_doi:
        cites.append(bio.CiteEntry(text=options.cite_text or "User citation", doi=options.cite_doi))
    if seed is not None:
        cites.append(bio.CiteEntry(text=seed.text, doi=seed.doi, url=seed.url if seed.doi is None else None))
    cites.append(bio.CiteEntry(text=SCOPERT_CITE.text, url=SCOPERT_CITE.url))
    inp = bio.InputTensorDescr(
        id=bio.TensorId("input"), axes=input_axes(card), description=f"raw image ({card.input.name})",
        test_tensor=bio.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=bio.FileDescr(source=folder / "sample_input.tif"), preprocessing=preprocessing(card),
        pad=bio.ReflectPadding(mode="reflect"))  # the runtime reflects at image borders; bioimageio.core's default is symmetric
    out = bio.OutputTensorDescr(
        id=bio.TensorId("output"), axes=output_axes(card), description=f"model output ({card.output.name})",
        test_tensor=bio.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=bio.FileDescr(source=folder / "sample_output.tif"))
    opset = int(card.verification.get("onnx_vs_torch", {}).get("opset") or _onnx_opset(onnx_path))
    tolerance = bio.ReproducibilityTolerance(**REPRODUCIBILITY)
    config = bio.Config(bioimageio=bio.BioimageioConfig(reproducibility_tolerance=[tolerance]),
                        scopert=json.loads(card.to_json()))
    try:
        return bio.ModelDescr(
            name=options.name or default_name(card),
            description=options.description or default_description(card),
            authors=[bio.Author(name=a) for a in (options.authors or [_user()])],
            cite=cites,
            license=bio.LicenseId(options.license),
            documentation=bio.FileDescr(source=folder / "README.md"),
            covers=[bio.FileDescr(source=folder / "cover.png")],
            tags=list(dict.fromkeys(["scopert", card.family, f"{len(card.input.spatial_axes)}d",
                                     seed.task if seed else "restoration", "onnx", *options.tags])),
            inputs=[inp], outputs=[out],
            weights=bio.WeightsDescr(onnx=bio.OnnxWeightsDescr(source=onnx_path, opset_version=opset)),
            config=config,
        )
    except Exception as exc:  # pydantic ValidationError: name every failing field
        raise ConfigError(f"the bioimage.io description is invalid: {_pydantic_errors(exc)}. "
                          "Fix the named option (--name, --license, --author) or the card.") from None


def default_name(card: ModelCard) -> str:
    words = re.sub(r"[^A-Za-z0-9_+\- ()]", " ", f"ScopeRT {card.family} {card.name}")
    return re.sub(r"\s+", " ", words).strip()[:64]


def default_description(card: ModelCard) -> str:
    seed = SEEDS.get(card.family)
    dims = f"{len(card.input.spatial_axes)}D"
    what = seed.task if seed else "restoration"
    return (f"{dims} {card.family} {what} model '{card.name}', exported to ONNX by ScopeRT and verified against "
            "PyTorch; tile with the declared halo.")


# ---- test tensors, cover, README ------------------------------------------------------------------------
def read_sample(card: ModelCard, sample: str | os.PathLike | None) -> np.ndarray:
    """The real image for the test tensors: ``sample`` or the first training image the card names."""
    from scopert.export.precision import _read_array, _training_sources

    sources = [Path(sample)] if sample else _training_sources(card)
    if not sources:
        raise ConfigError("no real image for the package's test tensors: pass --sample IMAGE (TIFF/NPY/NPZ/HDF5), "
                          "or package a model whose run config names its training data.")
    return _read_array(sources[0])


def data_axes(card: ModelCard, shape: tuple[int, ...]) -> str:
    """The axes of a user image for this model: the input's without batch (and without 'c' for one channel),
    with the model's channels on 'c', or a stack of 2D images ('n' first)."""
    model = card.input.axes[1:]
    plain = model.replace("c", "") if card.input.channels == 1 else model
    candidates = [plain, model] + ([] if set(plain) & set("tz") else ["n" + plain])
    for axes in dict.fromkeys(candidates):
        if len(axes) == len(shape) and ("c" not in axes or shape[axes.index("c")] == card.input.channels):
            return axes
    raise InputError(f"the sample image has shape {tuple(shape)}; the model input {card.input.axes!r} takes images "
                     f"with axes {plain!r}. Pass --sample with such an image.")


def test_tile(card: ModelCard, image: np.ndarray, notes: list[str] | None = None) -> np.ndarray:
    """A centred crop of a real image, raw counts as float32, in the model's input layout with batch 1.

    Every tiled axis gets the largest valid size (``min + n*step``) up to TEST_TILE_CAP or the image size. An
    image shorter than the smallest valid size along an axis (16 z planes for a model that needs 19) is mirrored
    at both ends to that size, as the runtime pads tiles at image borders, and ``notes`` says so.
    """
    image = np.asarray(image)
    if image.dtype.kind not in "uif" or not np.all(np.isfinite(image)):
        raise InputError("the sample image must be finite numeric data (no NaN/Inf); pass a real raw image.")
    axes = data_axes(card, image.shape)
    index = []
    for i, ax in enumerate(axes):
        n = image.shape[i]
        if ax == "n":
            index.append(n // 2)
            continue
        if ax == "c":
            index.append(slice(None))
            continue
        if ax == "t" and "t" not in card.output.axes:
            size = int(card.input.time_window or 1)
        else:
            lo, step = size_parameters(card, ax)
            if ax == "t":
                lo = max(lo, int(card.input.time_window or 1))
            size = lo + max(0, (min(n, TEST_TILE_CAP[ax]) - lo) // step) * step
        if n < size:
            before = (size - n) // 2
            pads = [(0, 0)] * image.ndim
            pads[i] = (before, size - n - before)
            image = np.pad(image, pads, mode="reflect" if n > 1 else "edge")
            message = (f"the sample image is {n} long on axis {ax!r} and the model needs at least {size}: its test "
                       f"tile mirrors it at both ends to {size} (pass a larger image with --sample to avoid that)")
            log.warning("%s", message)
            if notes is not None:
                notes.append(message)
            n = size
        start = (n - size) // 2
        index.append(slice(start, start + size))
    tile = image[tuple(index)].astype(np.float32)
    cur = axes.replace("n", "")
    model = card.input.axes[1:]
    if "c" in model and "c" not in cur:
        tile, cur = tile[np.newaxis], "c" + cur
    tile = np.transpose(tile, [cur.index(a) for a in model])
    return np.ascontiguousarray(tile[np.newaxis])


def reference_output(onnx_path: Path, card: ModelCard, test_in: np.ndarray) -> np.ndarray:
    """The expected output: the card's normalization on the whole tile, then the ONNX model, untiled."""
    import onnxruntime as ort

    x = normalize_whole(card, test_in)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    if not np.all(np.isfinite(out)):
        raise RunError("the model produces NaN/Inf on the test tile; check the model and the sample image.")
    return out.astype(np.float32)


def normalize_whole(card: ModelCard, x: np.ndarray) -> np.ndarray:
    """Apply the card's normalization to a (1, ...) model-layout tensor as the runtime would (once, per frame)."""
    from scopert.runtime.normalize import fit_normalization

    n = card.normalization
    if n.per_frame and "t" in card.input.axes:
        t = card.input.axes.index("t")
        frames = [np.take(x, i, axis=t) for i in range(x.shape[t])]
        return np.stack([fit_normalization(f, n)(f) for f in frames], axis=t).astype(np.float32)
    return fit_normalization(x, n)(x).astype(np.float32)


def write_cover(path: Path, card: ModelCard, test_in: np.ndarray, test_out: np.ndarray) -> None:
    """raw | output side by side (2D: the tile; 3D: its middle plane), 8-bit, 2:1."""
    import imageio.v3 as iio

    def plane(arr: np.ndarray, axes: str) -> np.ndarray:
        a = arr[0]
        axes = axes[1:]
        for ax in list(axes):
            if ax not in "yx":
                i = axes.index(ax)
                a = np.take(a, a.shape[i] // 2 if ax != "c" else 0, axis=i)
                axes = axes.replace(ax, "")
        lo, hi = np.percentile(a, [0.5, 99.5])
        return np.clip((a - lo) / (hi - lo if hi > lo else 1.0) * 255, 0, 255).astype(np.uint8)

    left, right = plane(test_in, card.input.axes), plane(test_out, card.output.axes)
    if right.shape != left.shape:  # an upsampling model: show the raw at the output size
        ry, rx = right.shape[0] // left.shape[0], right.shape[1] // left.shape[1]
        left = np.kron(left, np.ones((max(ry, 1), max(rx, 1)), np.uint8))[: right.shape[0], : right.shape[1]]
    iio.imwrite(path, np.concatenate([left, right], axis=1))


def write_samples(folder: Path, test_in: np.ndarray, test_out: np.ndarray) -> None:
    """The test tensors as TIFF (``sample_tensor``: what a person opens in Fiji), without the batch axis."""
    import tifffile

    tifffile.imwrite(folder / "sample_input.tif", test_in[0])
    tifffile.imwrite(folder / "sample_output.tif", test_out[0])


def readme_text(card: ModelCard, options: PackageOptions, test_shape: tuple[int, ...], summary: Any) -> str:
    seed = SEEDS.get(card.family)
    ver = card.verification.get("onnx_vs_torch", {})
    rf = ver.get("receptive_field", {})
    lines = [
        f"# {options.name or default_name(card)}", "",
        options.description or default_description(card), "",
        f"- family: `{card.family}`" + (f" (seed: {seed.text})" if seed else ""),
        f"- input `{card.input.axes}` ({card.input.channels} channel(s)), output `{card.output.axes}` "
        f"({card.output.channels} channel(s)), output scale {card.output.scale or 1}",
        f"- normalization: {card.normalization.kind} (as bioimage.io preprocessing, statistics per sample)",
        f"- halo {card.halo}; tile-invariant: {card.tile_invariant}"
        + ("" if card.tile_invariant else " (the model pools over the tile: blockwise results depend on the block "
                                          "size; ScopeRT blends overlapping tiles, bioimage.io tools crop)"),
        "", "Run it with ScopeRT: `scopert import bioimageio THIS.zip -o model.onnx` then "
        "`scopert apply -m model.onnx -i IMAGE -o OUT`.", "",
        "# Validation", "",
        f"- ONNX (opset {ver.get('opset', '?')}) vs PyTorch: max abs error {ver.get('max_abs_error', float('nan')):.3g} "
        f"over shapes {[tuple(s['shape']) for s in ver.get('shapes', [])]} (ONNX Runtime {ver.get('onnxruntime', '?')},"
        f" torch {ver.get('torch', '?')})",
        f"- receptive field measured by impulse probe: halo {rf.get('halo', card.halo)}, "
        f"global dependency {rf.get('global_dependency', '?')}",
        f"- test tensors: a real tile of shape {tuple(test_shape)} (raw counts as float32) and the ONNX output on it",
    ]
    if summary is not None:
        lines.append(f"- bioimageio.core {_core_version()} `test_model`: **{summary.status}** "
                     f"({len(summary.details)} checks, ONNX Runtime)")
    lines.append("")
    return "\n".join(lines)


# ---- helpers ------------------------------------------------------------------------------------------------
def _channel_names(n: int, stem: str) -> list[str]:
    return [stem] if n == 1 else [f"{stem}{i}" for i in range(n)]


def _onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _user() -> str:
    try:
        return getpass.getuser() or "ScopeRT user"
    except Exception:  # no login name in some containers
        return "ScopeRT user"


def _core_version() -> str:
    from importlib.metadata import version

    return version("bioimageio.core")


def _summary_errors(summary: Any) -> str:
    errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in summary.errors][:5]
    return "; ".join(errors) or f"status {summary.status}"


def _pydantic_errors(exc: Exception) -> str:
    errs = getattr(exc, "errors", None)
    if callable(errs):
        return "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in errs()[:5])
    return f"{type(exc).__name__}: {exc}"
