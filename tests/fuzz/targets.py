"""What each fuzzed reader is, how one case is made from the corpus, and how its outcome is classified.

A case is ``(reader, index)``: ``make_case`` turns it into a mutated file (or Zarr folder) in a work
folder, deterministically, and ``run_reader`` calls the reader the way the runtime or trainer does.
``classify`` runs one case and names its outcome:

- ``ok``: the reader returned a usable result;
- ``scopert``: it raised a ScopertError with a message (the wanted refusal);
- ``bug``: any other exception, or a ScopertError without a message.

Hangs and crashes are caught by the callers (a child process with a timeout in the benchmark, a
watchdog in the CI test).
"""

from __future__ import annotations

import random
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from scopert.errors import ScopertError
from tests.fuzz.mutators import mutate_bytes, mutate_document

OUTCOMES = ("ok", "scopert", "bug", "hang", "crash")


# ------------------------------------------------------------------------------------- reader calls


def _read_array_like_runtime(path: Path) -> None:
    """read_image, a one-row slab, the whole array, then check_array (as `scopert apply` does)."""
    from scopert.runtime.io import check_array, read_image

    with read_image(path) as image:
        _ = (image.shape, image.dtype, image.axes, image.axes_guessed)
        if image.ndim:
            np.asarray(image.array[0:1])
        array = np.array(image.array)
    check_array(array)


def _read_tiff(path: Path) -> None:
    from scopert.runtime.io.tiff import TiffSlabReader

    _read_array_like_runtime(path)
    with TiffSlabReader(path) as reader:  # the streamed path of `scopert apply`
        reader.read(0, 1)
        reader.read(0, len(reader))


def _read_card(path: Path) -> None:
    from scopert.card import read_sidecar
    from scopert.runtime.layout import layouts

    card = read_sidecar(path.with_name(path.name[: -len(".card.json")]))
    if card is None:
        raise AssertionError("the sidecar was not found")
    card.validate()
    layouts(card)


def _config_reader(module: str, function: str) -> Callable[[Path], None]:
    def read(path: Path) -> None:
        import importlib

        getattr(importlib.import_module(module), function)(path)

    return read


def _read_cnnt_seed(path: Path) -> None:
    from scopert.training.cnnt.importer import model_config_from_seed, read_seed_config

    model_config_from_seed(read_seed_config(path), str(path))


@dataclass(frozen=True)
class Reader:
    """One fuzz target: how its seeds are mutated ('bytes', 'json', 'yaml' by suffix, 'zarr') and read."""

    name: str
    kind: str
    read: Callable[[Path], None]


READERS: dict[str, Reader] = {r.name: r for r in (
    Reader("tiff", "bytes", _read_tiff),
    Reader("hdf5", "bytes", _read_array_like_runtime),
    Reader("zarr", "zarr", _read_array_like_runtime),
    Reader("card", "document", _read_card),
    Reader("rcan_config", "document", _config_reader("scopert.training.rcan.config", "load_rcan_config")),
    Reader("unet_config", "document", _config_reader("scopert.training.unet.config", "load_unet_config")),
    Reader("tagan_config", "document", _config_reader("scopert.training.tagan.config", "load_tagan_config")),
    Reader("shine_config", "document", _config_reader("scopert.training.blindspot.train", "load_blindspot_config")),
    Reader("cnnt_config", "document", _config_reader("scopert.training.cnnt.train", "load_cnnt_config")),
    Reader("cnnt_seed_config", "document", _read_cnnt_seed),
)}


# --------------------------------------------------------------------------------------- making cases


def case_rng(reader: str, index: int) -> random.Random:
    return random.Random(f"scopert-fuzz:{reader}:{index}")


def _doc_format(path: Path) -> str:
    return "yaml" if path.suffix in (".yaml", ".yml") else "json"


def _mutate_zarr(seed: Path, case: Path, rng: random.Random) -> None:
    shutil.copytree(seed, case)
    files = sorted(p for p in case.rglob("*") if p.is_file())
    meta = [p for p in files if p.name in ("zarr.json", ".zarray", ".zattrs", ".zgroup")]
    target = rng.choice(meta if meta and rng.random() < 0.6 else files)
    if rng.random() < 0.05:
        target.unlink()
        return
    data = target.read_bytes()
    if target in meta and rng.random() < 0.7:
        target.write_bytes(mutate_document(data.decode(), rng, "json"))
    else:
        target.write_bytes(mutate_bytes(data, rng))


def make_case(reader: str, index: int, seeds: list[Path], work: Path) -> Path:
    """Write case ``index`` of ``reader`` into the (empty or new) folder ``work`` and return its path."""
    work.mkdir(parents=True, exist_ok=True)
    rng = case_rng(reader, index)
    seed = seeds[index % len(seeds)]
    kind = READERS[reader].kind
    case = work / seed.name  # the same name keeps the suffix (.ome.tif, .yaml, .card.json ...)
    if kind == "zarr":
        _mutate_zarr(seed, case, rng)
    elif kind == "bytes":
        case.write_bytes(mutate_bytes(seed.read_bytes(), rng))
    else:
        case.write_bytes(mutate_document(seed.read_text(), rng, _doc_format(seed)))
    return case


# ------------------------------------------------------------------------------------------ outcomes


@dataclass
class Outcome:
    reader: str
    index: int
    outcome: str
    seconds: float
    error: str = ""  # exception type and message (the first line), for scopert and bug outcomes
    trace: str = ""  # the traceback's last lines, for bugs

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v != ""}


def classify(reader: str, index: int, case: Path) -> Outcome:
    """Run one case in this process and name its outcome ('ok', 'scopert' or 'bug')."""
    t0 = time.perf_counter()
    try:
        READERS[reader].read(case)
    except ScopertError as exc:
        seconds = time.perf_counter() - t0
        message = str(exc).strip()
        if not message:
            return Outcome(reader, index, "bug", seconds, f"{type(exc).__name__} without a message")
        return Outcome(reader, index, "scopert", seconds, f"{type(exc).__name__}: {message.splitlines()[0][:300]}")
    except Exception as exc:  # noqa: BLE001 - any other exception is what the fuzzer looks for
        seconds = time.perf_counter() - t0
        trace = "".join(traceback.format_exception(exc)[-4:])[-1500:]
        return Outcome(reader, index, "bug", seconds, f"{type(exc).__name__}: {str(exc)[:300]}", trace)
    return Outcome(reader, index, "ok", time.perf_counter() - t0)


def run_case(reader: str, index: int, seeds: list[Path], work: Path) -> Outcome:
    """Make case ``index`` in a fresh ``work`` folder, classify it, and clean the folder."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        return classify(reader, index, make_case(reader, index, seeds, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
