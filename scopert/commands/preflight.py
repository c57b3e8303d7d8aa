"""Checks a command runs before its first tile, step or build: arguments, paths, model/data layout, disk space.

A bad argument must cost the user a second, not the hour of compute before the step that first uses it.
Every check raises a ``ScopertError`` (exit 2) whose message names the option and the fix, and none of
them writes anything: a folder's writability is probed with a temporary file that is removed at once,
and folders that a command would create are only checked to be creatable. The card of an ONNX file is
read from its metadata by skipping over the graph, without onnx, a backend or torch, so ``scopert export``
or ``scopert train`` can refuse a bad argument before torch is even imported.

Imports the standard library, ``scopert.errors``, ``scopert.card`` and the runtime's light I/O helpers;
tifffile (image headers) lazily; never torch, onnx or an inference backend.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from scopert.card import METADATA_KEY, ModelCard
from scopert.errors import CardError, ConfigError, InputError, OutputError, ScopertError
from scopert.runtime.io.atomic import check_output_path, check_writable_folder
from scopert.runtime.io.space import check_free_space

TIFF_OUT = (".tif", ".tiff")
JSON_OUT = (".json",)


# ---- numbers ---------------------------------------------------------------------------------------------
def check_count(value: int | None, option: str, minimum: int = 1) -> int | None:
    """An integer option that must be >= ``minimum`` (None stays None: the option was not given)."""
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ConfigError(f"{option} {value} must be an integer >= {minimum}; e.g. {option} {max(minimum, 1)}.")
    return int(value)


def check_positive(value: float | None, option: str, example: str = "1") -> float | None:
    """A finite number > 0 (None stays None)."""
    if value is None:
        return None
    if not math.isfinite(float(value)) or value <= 0:
        raise ConfigError(f"{option} {value:g} must be a positive number; e.g. {option} {example}.")
    return float(value)


def check_finite(value: float | None, option: str) -> float | None:
    if value is not None and not math.isfinite(float(value)):
        raise ConfigError(f"{option} {value} must be a finite number.")
    return value


def parse_sizes(value: str | None, option: str, axes: str | None = None) -> tuple[int, ...] | None:
    """'16,256,256' -> (16, 256, 256), every size >= 1, one per letter of ``axes`` when given."""
    if value is None:
        return None
    example = ",".join("16" if a in "zt" else "256" for a in (axes or "yx"))
    try:
        sizes = tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option} {value!r} is not a comma-separated list of integers, e.g. {option} "
                          f"{example}.") from None
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"{option} {value!r} has a size below 1 (an empty image or tile); give sizes >= 1, e.g. "
                          f"{option} {example}.")
    if axes is not None and len(sizes) != len(axes):
        raise ConfigError(f"{option} {value!r} gives {len(sizes)} dimensions but the model's tiled axes are "
                          f"{axes!r} ({len(axes)} dimensions), e.g. {option} {example}.")
    return sizes


# ---- paths -------------------------------------------------------------------------------------------------
def check_input_file(path: str | os.PathLike, option: str, suffixes: Iterable[str] | None = None) -> Path:
    """An existing file (not a folder, but a .zarr store) with one of ``suffixes`` (case-insensitive) when given."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{option} {path} does not exist; check the path.")
    if path.is_dir() and not path.name.lower().endswith(".zarr"):
        raise InputError(f"{option} {path} is a folder; give a file.")
    if suffixes is not None:
        _check_suffix(path, option, tuple(suffixes), InputError)
    return path


def _check_suffix(path: Path, option: str, suffixes: tuple[str, ...], error: type[ScopertError]) -> None:
    if not path.name.lower().endswith(suffixes):
        raise error(f"{option} {path}: unknown file type {path.suffix or '(no suffix)'!r}; use a name ending in "
                    f"{' or '.join(suffixes)}.")


def check_output_file(path: str | os.PathLike, option: str, suffixes: Iterable[str],
                      inputs: Iterable[str | os.PathLike | None] = (), create_folder: bool = False) -> Path:
    """An output file: a known suffix, not a folder, none of ``inputs``, in a writable folder that exists (or,
    with ``create_folder``, can be created; nothing is made before the work starts)."""
    path = Path(path)
    check_output_path(path, inputs, option=option, suffixes=suffixes,
                      folder="creatable" if create_folder else "existing")
    return path


def check_output_folder(path: str | os.PathLike, option: str) -> Path:
    """A folder a command fills (run folder, engine store): a folder or nothing yet, creatable, writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file; give a folder (it is created when missing).")
    check_writable_folder(path, option, path, create=True)
    return path


def check_space(dest: str | os.PathLike, need_bytes: int, what: str) -> None:
    """The disk that will hold ``dest`` has room for ``need_bytes`` (5% margin); OutputError otherwise."""
    check_free_space(dest, int(need_bytes), what)


# ---- models and images ---------------------------------------------------------------------------------------


def model_card(path: str | os.PathLike, option: str = "-m") -> ModelCard:
    """The card of an .onnx model (its sidecar, else its metadata) without loading the model."""
    from scopert.runtime.loader import read_card

    path = check_input_file(path, option, (".onnx",))
    try:
        card = read_card(path)
    except InputError as exc:
        raise InputError(f"{option} {exc}") from None
    if card is None:
        raise CardError(f"{option} {path} has no ScopeRT card ({METADATA_KEY!r} metadata); export it with "
                        "`scopert export` (or write a sidecar card).")
    return card


def check_tile(card: ModelCard, sizes: tuple[int, ...], axes: str, option: str) -> dict[str, int]:
    """Tile sizes (one per letter of ``axes``) the model can run: a multiple of its divisor, larger than twice
    its halo (something is left after the halo is cut off), an integer size after its output scale."""
    if len(sizes) != len(axes):
        raise ConfigError(f"{option} {','.join(map(str, sizes))} has {len(sizes)} sizes but the model's tiled axes "
                          f"are {axes!r} ({len(axes)} sizes).")
    tile = dict(zip(axes, sizes))
    for ax, size in tile.items():
        if ax in card.input.fixed and size != card.input.fixed[ax]:
            raise ConfigError(f"{option}: axis {ax!r} = {size}, but the model's graph takes exactly "
                              f"{card.input.fixed[ax]} there (a fixed input shape); use {card.input.fixed[ax]}.")
        divisor = int(card.input.divisor.get(ax, 1))
        halo = int(card.halo.get(ax, 0))
        scale = float(card.output.scale.get(ax, 1.0))
        if size % divisor:
            up = -(-size // divisor) * divisor
            raise ConfigError(f"{option}: axis {ax!r} = {size} is not a multiple of the model's divisor {divisor}; "
                              f"use {up}.")
        if size <= 2 * halo:
            least = -(-(2 * halo + divisor) // divisor) * divisor
            raise ConfigError(f"{option}: axis {ax!r} = {size} is not larger than twice the model's halo "
                              f"({2 * halo}), so nothing is left once the halo is cut off; use at least {least}.")
        if abs(size * scale - round(size * scale)) > 1e-6:
            raise ConfigError(f"{option}: axis {ax!r} = {size} times the output scale {scale:g} is not a whole "
                              "number of pixels; pick a size that is.")
    return tile


@dataclass(frozen=True)
class ImageHeader:
    """What a file says about its image, read without its pixels."""

    path: Path
    shape: tuple[int, ...]
    axes: str | None
    source_axes: str | None
    itemsize: int


def image_header(path: str | os.PathLike, option: str, dataset: str | None = None) -> ImageHeader:
    """Shape and axes of an image file (TIFF, HDF5, Zarr) from its header; the pixels are not read."""
    from scopert.runtime.io import image_kind, read_image
    from scopert.runtime.io.tiff import TiffSlabReader

    path = Path(path)
    try:
        if not path.exists():
            raise InputError(f"{path} does not exist; check the path.")
        if image_kind(path) == "tiff":
            with TiffSlabReader(path) as reader:
                return ImageHeader(path, reader.shape, reader.axes, reader.source_axes, reader.dtype.itemsize)
        with read_image(path, dataset=dataset) as img:
            return ImageHeader(path, img.shape, img.axes, img.source_axes, img.dtype.itemsize)
    except ScopertError as exc:
        raise type(exc)(f"{option} {exc}") from None


# ---- whole commands defined in scopert/cli.py ------------------------------------------------------------------
RUN_FOLDER_MIN_BYTES = 64 * 2**20  # best.pt + last.pt (with Adam's two moments: 3x the weights) + plots, small nets
CALIB_SUFFIXES = (".tif", ".tiff", ".npy", ".npz", ".h5", ".hdf5", ".hdf")


def check_train_args(family: str, config_path: str | os.PathLike, out_dir: str | os.PathLike,
                     no_resume: bool) -> None:
    """``scopert train``: a parseable config, a run folder that can be written (and may be, with --no-resume)
    and room for its checkpoints; before torch is imported or any training data is read."""
    from scopert.training.common.config_file import read_config_file
    from scopert.training.common.runfolder import previous_run

    read_config_file(config_path, f"the {family} training config (-c)")
    out = check_output_folder(out_dir, "-o")
    try:
        previous_run(out, not no_resume, family)
    except ScopertError as exc:
        raise type(exc)(f"-o {exc}") from None
    check_space(out / "checkpoints" / "last.pt", RUN_FOLDER_MIN_BYTES, f"-o {out} (checkpoints)")


def check_export_args(run_folder: str | os.PathLike, out_path: str | os.PathLike, opset: int, fp16: bool,
                      calib: Iterable[str], safety_factor: float) -> None:
    """``scopert export``: a run folder with a checkpoint, an .onnx target that can be written (the FP16 one
    too), a usable opset and --fp16 options; before torch is imported or the model is traced."""
    from scopert.export.onnx_export import check_opset
    from scopert.training.common.runfolder import read_run_info

    try:
        info = read_run_info(run_folder)
    except ScopertError as exc:
        raise type(exc)(f"RUN_FOLDER {exc}") from None
    ckpt = info.best_checkpoint
    if not ckpt.is_file():
        raise InputError(f"RUN_FOLDER {run_folder} has no checkpoint ({ckpt} is missing); train longer than one "
                         "epoch, or import a checkpoint with `scopert import`.")
    check_opset(opset)
    calib = list(calib)
    if calib and not fp16:
        raise ConfigError("--calib feeds the CPU gates and the FP16 plan, and --no-cpu-gates without --fp16 uses "
                          "neither; drop --calib or --no-cpu-gates.")
    for path in calib:
        check_input_file(path, "--calib", CALIB_SUFFIXES)
    if not math.isfinite(safety_factor) or safety_factor < 1:
        raise ConfigError(f"--safety-factor {safety_factor:g} must be >= 1 (nodes whose |x| exceeds 65504/F stay "
                          "FP32); e.g. --safety-factor 4.")
    out = check_output_file(out_path, "-o", (".onnx",), inputs=(ckpt,), create_folder=True)
    need = ckpt.stat().st_size
    if fp16:
        fp16_out = out.with_suffix(".fp16.onnx")
        check_output_file(fp16_out, "-o (its FP16 copy)", (".onnx",), inputs=(ckpt,), create_folder=True)
        need += need // 2
    check_space(out, need, f"-o {out}")
