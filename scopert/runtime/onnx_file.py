"""Where an ONNX file's tensors keep their data: external data must stay inside the model's folder.

An ONNX tensor can name an external file (``external_data`` ``location``) that the loaders read next to the model.
A file from elsewhere could point that at ``../../home/user/.ssh/id_rsa`` or an absolute path, and the bytes would
become weights, and leak through outputs. ONNX Runtime 1.32, OpenVINO and ``onnx.load`` refuse such paths today,
each with its own message; this check refuses them up front, for every backend (TensorRT's parser included), with
one message that names the tensor, the path and the fix.

The file is read as protobuf wire format, only the fields on the way to each TensorProto (graph, nodes,
attributes, subgraphs, functions, sparse tensors); ``raw_data`` and other fields are skipped without copying. Must
not import onnx or torch (the runtime runs without them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from scopert.errors import InputError

_MODEL_METADATA_FIELD = 14  # ModelProto.metadata_props (repeated StringStringEntryProto {key = 1, value = 2})
MAX_DEPTH = 64  # nested subgraphs (If/Loop bodies); deeper is a damaged or hostile file
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

# Field numbers from onnx.proto (onnx 1.x; a test checks them against the onnx package). Each maps a field that
# holds a message to that message's kind; every other field is skipped.
_MODEL = {7: "graph", 25: "function"}
_FUNCTION = {7: "node"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_CHILDREN = {"model": _MODEL, "function": _FUNCTION, "graph": _GRAPH, "node": _NODE, "attribute": _ATTRIBUTE,
             "sparse": _SPARSE}
_TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 8, 13, 14


@dataclass(frozen=True)
class ExternalData:
    """One tensor whose data lives in another file."""

    tensor: str
    location: str
    offset: int | None = None
    length: int | None = None


class _Damaged(Exception):
    """The protobuf ends inside a field or holds a wire type that ONNX never writes."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Damaged("a varint runs past its field")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) of one message: ints for varints, memoryviews for bytes fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _Damaged("a field runs past the end of its message")
            value, pos = buf[pos:pos + size], pos + size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(buf):
                raise _Damaged("a fixed-size field runs past the end of its message")
            value = None
        else:
            raise _Damaged(f"wire type {wire} (protobuf groups) does not occur in ONNX")
        yield number, wire, value


def _text(view: memoryview) -> str:
    return bytes(view).decode("utf-8", errors="replace")


def _tensor(buf: memoryview) -> ExternalData | None:
    name, location_kind, entries = "", 0, {}
    for number, wire, value in _fields(buf):
        if number == _TENSOR_NAME and wire == 2:
            name = _text(value)
        elif number == _TENSOR_LOCATION and wire == 0:
            location_kind = value
        elif number == _TENSOR_EXTERNAL and wire == 2:
            entry = {n: _text(v) for n, w, v in _fields(value) if w == 2 and n in (1, 2)}
            entries[entry.get(1, "")] = entry.get(2, "")
    if location_kind != EXTERNAL and "location" not in entries:
        return None

    def number_of(key: str) -> int | None:
        text = entries.get(key)
        if text is None:
            return None
        if not text.strip().isdigit():
            raise _Damaged(f"tensor {name!r} has external-data {key} {text!r}, not a byte count")
        return int(text)

    return ExternalData(name, entries.get("location", ""), number_of("offset"), number_of("length"))


def _walk(buf: memoryview, kind: str, depth: int, found: list[ExternalData]) -> None:
    if depth > MAX_DEPTH:
        raise _Damaged(f"subgraphs nest deeper than {MAX_DEPTH} levels")
    children = _CHILDREN[kind]
    for number, wire, value in _fields(buf):
        child = children.get(number)
        if child is None or wire != 2:
            continue
        if child == "tensor":
            ext = _tensor(value)
            if ext is not None:
                found.append(ext)
        else:
            _walk(value, child, depth + 1, found)


def _dims(buf: memoryview) -> list[int]:
    """The dims of one TensorProto (field 1: repeated int64, packed or not)."""
    dims: list[int] = []
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 0:
            dims.append(value)
        elif number == 1 and wire == 2:
            pos = 0
            while pos < len(value):
                d, pos = _varint(value, pos)
                dims.append(d)
    return dims


def widest_filter_bank(path: str | os.PathLike) -> int:
    """The most output channels of any convolution-like weight (an initializer of rank 3 or more) in the main
    graph: a cheap bound on the channels of the widest activation, for sizing tiles to memory. 1 if none."""
    widest = 1
    try:
        data = memoryview(Path(path).read_bytes())
        for number, wire, value in _fields(data):
            if number == 7 and wire == 2:  # ModelProto.graph
                for g_number, g_wire, g_value in _fields(value):
                    if g_number == 5 and g_wire == 2:  # GraphProto.initializer
                        dims = _dims(g_value)
                        if len(dims) >= 3:
                            widest = max(widest, dims[0], dims[1])
    except (OSError, _Damaged):
        return widest
    return widest


def _read_varint(fh) -> int | None:
    shift = result = 0
    while True:
        byte = fh.read(1)
        if not byte:
            return None if shift == 0 else -1
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            return -1


def _metadata_entry(data: bytes) -> tuple[str, str]:
    import io

    fh, fields = io.BytesIO(data), {}
    while (tag := _read_varint(fh)) is not None:
        if tag < 0 or tag & 7 != 2:
            raise ValueError("metadata entry is not two strings")
        n = _read_varint(fh)
        if n is None or n < 0:
            raise ValueError("truncated metadata entry")
        fields[tag >> 3] = fh.read(n).decode("utf-8")
    return fields.get(1, ""), fields.get(2, "")


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (where the card lives), reading only their bytes: every other field,
    the graph and its weights included, is skipped by its length. The one metadata reader: ``load``, the engines
    and the CLI's preflight read the card through it, without onnx.

    ValueError when the bytes are not a protobuf message (not an ONNX file)."""
    found: dict[str, str] = {}
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        while (tag := _read_varint(fh)) is not None:
            if tag < 0:
                raise ValueError("bad field tag")
            field, wire = tag >> 3, tag & 7
            if field == 0:
                raise ValueError("field number 0")
            if wire == 0:
                if _read_varint(fh) in (None, -1):
                    raise ValueError("truncated varint")
            elif wire == 1:
                fh.seek(8, 1)
            elif wire == 5:
                fh.seek(4, 1)
            elif wire == 2:
                n = _read_varint(fh)
                if n is None or n < 0 or fh.tell() + n > size:
                    raise ValueError("length runs past the end of the file")
                if field == _MODEL_METADATA_FIELD:
                    key, value = _metadata_entry(fh.read(n))
                    found[key] = value
                else:
                    fh.seek(n, 1)
            else:
                raise ValueError(f"wire type {wire}")
            if fh.tell() > size:
                raise ValueError("field runs past the end of the file")
    return found


def onnx_io_names(path: str | os.PathLike) -> tuple[str, str]:
    """The names of the graph's first real input (not an initializer) and first output, read without onnx: what
    a card made from arguments (an ONNX file without one) names its tensors."""
    try:
        data = memoryview(Path(path).read_bytes())
        inputs, outputs, weights = [], [], set()
        for number, wire, value in _fields(data):
            if number == 7 and wire == 2:  # ModelProto.graph
                for g_number, g_wire, g_value in _fields(value):
                    if g_wire != 2:
                        continue
                    if g_number in (11, 12):  # GraphProto.input / output: ValueInfoProto, name = 1
                        name = next((_text(v) for n, w, v in _fields(g_value) if n == 1 and w == 2), "")
                        (inputs if g_number == 11 else outputs).append(name)
                    elif g_number == 5:  # GraphProto.initializer: TensorProto, name = 8
                        weights.update(_text(v) for n, w, v in _fields(g_value) if n == _TENSOR_NAME and w == 2)
    except (OSError, _Damaged) as exc:
        raise InputError(f"{path} is not a readable ONNX model ({exc}). Re-export it.") from None
    real = [n for n in inputs if n not in weights]
    if not real or not outputs:
        raise InputError(f"{path} has no graph input or output; it is not a model ScopeRT can run.")
    return real[0], outputs[0]


def external_data(path: str | os.PathLike) -> list[ExternalData]:
    """Every tensor of the ONNX file ``path`` that keeps its data in another file (none for most models)."""
    path = Path(path)
    try:
        data = path.read_bytes()  # the graph only: big models keep their weights in the external files
    except OSError as exc:
        raise InputError(f"cannot read the model file {path} ({exc.strerror or exc}).") from None
    if not data:
        raise InputError(f"{path} is empty, not an ONNX model. Pass an ONNX file written by `scopert export`.")
    found: list[ExternalData] = []
    try:
        _walk(memoryview(data), "model", 0, found)
    except _Damaged as exc:
        raise InputError(f"{path} is not a readable ONNX model ({exc}). Re-export it, or copy it again if it was "
                         "cut short.") from None
    return found


def check_external_data(path: str | os.PathLike) -> None:
    """Refuse an ONNX file whose external data lies outside its folder, is missing, or is shorter than declared.

    Allowed: relative locations without ``..`` whose real path (symlinks followed) stays inside the folder of
    ``path``, as ``onnx.save_model(..., save_as_external_data=True)`` writes them.
    """
    path = Path(path)
    folder = path.absolute().parent.resolve()
    fix = ("Keep the data file in the model's folder and name it there by its bare file name "
           "(onnx.save_model(model, path, save_as_external_data=True, location='NAME.data')), or re-export.")
    for ext in external_data(path):
        where = f"{path}: tensor {ext.tensor!r} keeps its data in {ext.location!r}"
        if not ext.location or "\x00" in ext.location:
            raise InputError(f"{path}: tensor {ext.tensor!r} is marked external but names no data file. {fix}")
        posix, windows = PurePosixPath(ext.location), PureWindowsPath(ext.location)
        if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
            raise InputError(f"{where}, an absolute path; ScopeRT reads external data only from inside the "
                             f"model's folder {folder}. {fix}")
        if ".." in posix.parts or ".." in windows.parts:
            raise InputError(f"{where}, which contains '..'; ScopeRT reads external data only from inside the "
                             f"model's folder {folder}. {fix}")
        target = folder / posix
        real = target.resolve()
        if not real.is_relative_to(folder):
            raise InputError(f"{where}, which leads outside the model's folder {folder} (to {real}, through a "
                             f"symbolic link). {fix}")
        if not real.is_file():
            raise InputError(f"{where}, which does not exist in {folder}. Copy the data file next to the model.")
        end = (ext.offset or 0) + (ext.length or 0)
        if end > real.stat().st_size:
            raise InputError(f"{where} at bytes {ext.offset or 0}..{end}, but that file has only "
                             f"{real.stat().st_size} bytes; it is cut short. Copy it again, or re-export.")
