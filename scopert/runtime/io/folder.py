"""Folder batch mode: which images a folder holds, where their outputs go, which are already done.

Outputs are written atomically, so an output that exists is complete: a resumed batch run skips
it. Hidden files (including ``.NAME.partial-<pid>`` temporaries) are never listed as inputs.

Imports only the standard library and scopert (never torch or onnx).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from scopert.errors import InputError, OutputError
from scopert.runtime.io.image import SUPPORTED_SUFFIXES, ZARR_SUFFIXES, image_kind

log = logging.getLogger(__name__)


def _is_image(p: Path) -> bool:
    if p.name.startswith("."):
        return False
    name = p.name.lower()
    if p.is_dir():
        return name.endswith(ZARR_SUFFIXES)
    return p.is_file() and name.endswith(SUPPORTED_SUFFIXES)


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files (and ``.zarr`` stores) directly in ``folder``, sorted by name.

    Sorted like 3D-RCAN's ``sorted(glob)``, so raw and ground-truth folders pair up in order.
    Raises InputError when the folder does not exist or holds no supported image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give a folder of images or a single image file")
    images = sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)
    if not images:
        raise InputError(
            f"{folder} holds no images; supported suffixes are {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return images


def output_path_for(input_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                    suffix: str | None = None) -> Path:
    """The output for ``input_path`` in ``out_dir``: the same file name (3D-RCAN's rule), or a new suffix.

    ``suffix`` (e.g. '.h5') replaces the input's image suffix, '.ome.tif' counted as one suffix.
    """
    src = Path(input_path)
    if suffix is None:
        return Path(out_dir) / src.name
    image_kind(Path("x" + suffix))  # InputError for an unknown output type
    name = src.name
    low = name.lower()
    for s in (".ome.tiff", ".ome.tif") + SUPPORTED_SUFFIXES:
        if low.endswith(s):
            name = name[: -len(s)]
            break
    return Path(out_dir) / (name + suffix)


def plan_batch(inputs: list[Path], out_dir: str | os.PathLike[str], suffix: str | None = None,
               overwrite: bool = False) -> list[tuple[Path, Path]]:
    """(input, output) pairs still to do; outputs that exist are skipped unless ``overwrite``.

    Raises OutputError when two inputs would write the same output, or an output would be an input.
    """
    pairs = [(Path(p), output_path_for(p, out_dir, suffix)) for p in inputs]
    resolved_inputs = {p.resolve() for p, _ in pairs}
    seen: dict[Path, Path] = {}
    for src, out in pairs:
        key = out.resolve()
        if key in resolved_inputs:
            raise OutputError(
                f"output {out} would overwrite the input {src}; choose an output folder other than the input folder"
            )
        if key in seen:
            raise OutputError(
                f"{seen[key].name} and {src.name} would both be written to {out}; "
                "rename one input or choose an output suffix that keeps them apart"
            )
        seen[key] = src
    todo = [(s, o) for s, o in pairs if overwrite or not o.exists()]
    if len(todo) < len(pairs):
        log.info("skipping %d of %d images whose outputs exist", len(pairs) - len(todo), len(pairs))
    return todo
