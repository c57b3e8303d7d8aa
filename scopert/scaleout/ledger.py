"""The ledger of a distributed run: what it computes (sha256 of model, input and options) and which blocks are done.

It lives inside the output store (``OUT.zarr/.scopert-ledger/``, which Zarr readers ignore), so it moves with it.
``manifest.json`` holds the identity of the run; ``done/<block>.json`` is written by the worker after the block's
chunks were fsynced, through a temporary name and a rename, so a marker never exists for a region that is not
on disk. Zarr skips empty chunks (``write_empty_chunks=False``), so a chunk's existence cannot mark a block done.
``--resume`` skips the blocks with a marker and refuses a run whose model, input or options changed.
Imports only the standard library and scopert.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scopert.checksum import sha256_file
from scopert.errors import OutputError
from scopert.runtime.io.atomic import fsync_path

log = logging.getLogger(__name__)

LEDGER_DIR = ".scopert-ledger"
MANIFEST = "manifest.json"
FULL_HASH_BYTES = 2 * 2**30  # inputs up to this size are hashed whole; larger ones by size, mtime, head and tail
EDGE_BYTES = 64 * 2**20


def input_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of an input: the whole file up to 2 GiB; above, of its size, mtime and first and last 64 MiB
    (hashing terabytes would take longer than restoring them); for a folder (Zarr), of its metadata files and
    of every file's name, size and mtime."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if not p.is_file() or LEDGER_DIR in p.parts:
                continue
            st = p.stat()
            digest.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            if p.name in (".zarray", ".zgroup", ".zattrs", "zarr.json"):
                digest.update(p.read_bytes())
        return digest.hexdigest()
    size = path.stat().st_size
    if size <= FULL_HASH_BYTES:
        return sha256_file(path)
    st = path.stat()
    digest.update(f"{size}\0{st.st_mtime_ns}\n".encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(EDGE_BYTES))
        fh.seek(size - EDGE_BYTES)
        digest.update(fh.read(EDGE_BYTES))
    return digest.hexdigest()


def write_json_durably(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary name, fsync it, rename it, fsync the folder: all of it or nothing."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


@dataclass
class Ledger:
    """The ledger folder of one output store."""

    folder: Path

    @classmethod
    def of(cls, store: str | os.PathLike[str]) -> "Ledger":
        return cls(Path(store) / LEDGER_DIR)

    @property
    def done_dir(self) -> Path:
        return self.folder / "done"

    def exists(self) -> bool:
        return (self.folder / MANIFEST).is_file()

    def create(self, manifest: dict[str, Any]) -> None:
        self.done_dir.mkdir(parents=True, exist_ok=True)
        write_json_durably(self.folder / MANIFEST, manifest)

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.folder / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise OutputError(f"the ledger {self.folder / MANIFEST} cannot be read ({e}); the output cannot be "
                              "resumed: remove it and run again without --resume") from e

    def check_same(self, manifest: dict[str, Any], where: Path) -> None:
        """Refuse to resume when the model, the input or an option differs from the ledger's run."""
        old = self.manifest()
        manifest = json.loads(json.dumps(manifest, default=str))  # tuples as the JSON file holds them: lists
        for key, what in (("model_sha256", "the model"), ("input_sha256", "the input"),
                          ("options_sha256", "the options")):
            if old.get(key) != manifest.get(key):
                changed = ""
                if key == "options_sha256":
                    diff = sorted(k for k in set(old.get("options", {})) | set(manifest.get("options", {}))
                                  if old.get("options", {}).get(k) != manifest.get("options", {}).get(k))
                    changed = f" ({', '.join(diff)})" if diff else ""
                raise OutputError(f"--resume: {what}{changed} changed since {where} was started, so its finished "
                                  "blocks do not belong to this run; rerun with the same model, input and options, "
                                  "or remove the output and start again without --resume")

    def mark_done(self, name: str, info: dict[str, Any]) -> None:
        write_json_durably(self.done_dir / f"{name}.json", info)

    def done(self) -> set[str]:
        if not self.done_dir.is_dir():
            return set()
        return {p.name[:-len(".json")] for p in self.done_dir.iterdir()
                if p.name.endswith(".json") and not p.name.startswith(".")}


def options_digest(options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()
