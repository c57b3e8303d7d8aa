"""Deterministic mutations of real files for fuzzing the readers: bytes, and the structure of JSON/YAML.

Every function takes a ``random.Random``; the same seed gives the same case, so a failing case is
reproduced from its reader name and index alone. Byte mutations follow the classic fuzzers (bit
flips, "interesting" integers written over headers, truncation, inserted, deleted and duplicated
runs); structural mutations edit the parsed document (drop keys, wrong types, huge numbers, NaN,
deep nesting) and serialize it again.
"""

from __future__ import annotations

import copy
import json
import math
import random
import struct
from typing import Any

import yaml

# Integers that break size and offset arithmetic when written over a header field.
INTERESTING_INTS = (0, 1, 2, 7, 8, 16, 127, 128, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
                    0x80000000, 0xFFFFFFFF, 0x100000000, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 10**12)

# Replacement values for a node of a JSON/YAML document. ``DEEP`` is expanded textually after
# serialization (json/yaml cannot dump a 100000-deep list).
DEEP = "__scopert_fuzz_deep__"
INTERESTING_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 3, 2**31, 2**63, 10**30, -(10**30), 1e308, -1e308, float("nan"),
    float("inf"), float("-inf"), 0.5, -0.0, 1e-320, "", "x", "nan", "1", "zyx", "bczyx", "\u00fc\x00\u202e",
    "a" * 5000, [], {}, [1, 2], [None], {"a": 1}, [[[[[]]]]], DEEP,
)


# ------------------------------------------------------------------------------------------------ bytes


def _overwrite_int(data: bytearray, rng: random.Random) -> None:
    if not data:
        return
    width = rng.choice((1, 2, 4, 8))
    value = rng.choice(INTERESTING_INTS + (rng.getrandbits(8 * width),)) % (1 << (8 * width))
    endian = rng.choice("<>")
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
    raw = struct.pack(endian + fmt, value)
    at = rng.randrange(len(data))
    data[at:at + width] = raw[:max(0, min(width, len(data) - at))]


def _one_byte_mutation(data: bytearray, rng: random.Random) -> bytearray:
    n = len(data)
    op = rng.choice(("bitflip", "bitflip", "byte", "int", "int", "truncate", "insert", "delete", "duplicate"))
    if op == "truncate" or n == 0:
        return data[:rng.randrange(n + 1)]
    at = rng.randrange(n)
    if op == "bitflip":
        data[at] ^= 1 << rng.randrange(8)
    elif op == "byte":
        data[at] = rng.randrange(256)
    elif op == "int":
        _overwrite_int(data, rng)
    elif op == "insert":
        length = rng.choice((1, 2, 4, 16, 64, 512))
        run = bytes([rng.randrange(256)]) * length if rng.random() < 0.5 else rng.randbytes(length)
        data[at:at] = run
    elif op == "delete":
        del data[at:at + rng.choice((1, 2, 4, 16, 64, 512))]
    else:  # duplicate a run somewhere else
        start = rng.randrange(n)
        run = data[start:start + rng.choice((4, 16, 64, 256))]
        data[at:at] = run
    return data


def mutate_bytes(data: bytes, rng: random.Random, max_ops: int = 3) -> bytes:
    """``data`` after 1..max_ops random byte mutations (the result may be empty)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, max_ops)):
        out = _one_byte_mutation(out, rng)
    return bytes(out)


# ------------------------------------------------------------------------------------------- structure


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) to a node of a parsed document, the root included."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _get(node: Any, path: tuple) -> Any:
    for p in path:
        node = node[p]
    return node


def _wrong_type(value: Any, rng: random.Random) -> Any:
    """The same information in another type: 3 -> "3", [a] -> a, {k: v} -> [v], "s" -> ["s"]."""
    if isinstance(value, bool):
        return rng.choice(("true", 1, "yes"))
    if isinstance(value, int):
        return rng.choice((str(value), [value], float(value), {"value": value}))
    if isinstance(value, float):
        return rng.choice((str(value), [value], int(value) if math.isfinite(value) else None, {"value": value}))
    if isinstance(value, str):
        return rng.choice(([value], value.upper(), value + value, value[:1], 3))
    if isinstance(value, list):
        return value[0] if value else {}
    if isinstance(value, dict):
        return list(value.values())
    return "null"


def _interesting(rng: random.Random) -> Any:
    """A fresh copy of one of INTERESTING_VALUES (a shared list edited in place would leak into later cases)."""
    return copy.deepcopy(rng.choice(INTERESTING_VALUES))


def _one_structural_mutation(doc: Any, rng: random.Random) -> Any:
    paths = _paths(doc)
    path = rng.choice(paths)
    op = rng.choice(("drop", "drop", "value", "value", "value", "wrong_type", "wrong_type", "add_key",
                     "rename", "list"))
    if not path:  # the root
        if op in ("value", "wrong_type"):
            return _interesting(rng) if op == "value" else _wrong_type(doc, rng)
        path = rng.choice(paths)
        if not path:
            return doc
    parent, key = _get(doc, path[:-1]), path[-1]
    if op == "drop":
        del parent[key]
    elif op == "value":
        parent[key] = _interesting(rng)
    elif op == "wrong_type":
        parent[key] = _wrong_type(parent[key], rng)
    elif op == "add_key":
        target = parent[key] if isinstance(parent[key], dict) else parent
        if isinstance(target, dict):
            target[rng.choice(("extra", "halo", "Axes", "", "x" * 300))] = _interesting(rng)
    elif op == "rename" and isinstance(parent, dict):
        new = str(key)[:-1] + rng.choice("xyzbc_ ") if key else "k"
        parent[new] = parent.pop(key)
    elif op == "list":
        value = parent[key]
        if isinstance(value, list) and value:
            if rng.random() < 0.5:
                value.append(value[rng.randrange(len(value))])
            else:
                del value[rng.randrange(len(value))]
        else:
            parent[key] = [value] * rng.choice((0, 2, 1000))
    return doc


def _expand_deep(text: str, rng: random.Random) -> str:
    depth = rng.choice((50, 1000, 5000))  # parsers recurse: 1000 already passes the recursion limit
    for quoted in (json.dumps(DEEP), DEEP):
        text = text.replace(quoted, "[" * depth + "]" * depth)
    return text


def mutate_document(text: str, rng: random.Random, fmt: str, max_ops: int = 3) -> bytes:
    """A JSON or YAML document after structural mutations, then (sometimes) byte mutations.

    ``fmt`` is 'json' or 'yaml'. About one case in five gets byte mutations only, one in five
    gets both, so the parsers see broken syntax as well as well-formed but wrong content.
    """
    roll = rng.random()
    if roll < 0.2:
        return mutate_bytes(text.encode(), rng)
    doc = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    for _ in range(rng.randint(1, max_ops)):
        doc = _one_structural_mutation(doc, rng)
    if fmt == "json":
        out = json.dumps(doc, indent=rng.choice((None, 2)))
    else:
        out = yaml.safe_dump(doc, default_flow_style=rng.choice((None, False)), sort_keys=False)
        if rng.random() < 0.05:  # aliases: one anchored list referenced many times
            out = "anchor: &a [1, 2, 3]\nrefs: [" + ", ".join(["*a"] * 50) + "]\n" + out
    out = _expand_deep(out, rng)
    data = out.encode()
    return mutate_bytes(data, rng) if roll > 0.8 else data
