"""The SHA-256 of a file, read in 1 MiB blocks: the identity of checkpoints, models and engines in cards,
run folders and caches. Standard library only, so training, export and the lean runtime can all use it."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
