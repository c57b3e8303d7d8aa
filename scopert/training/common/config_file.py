"""Reading a training or import config file: one JSON or YAML mapping, with errors that name the fix.

Every family reads its seed's config format (3D-RCAN and CNNT JSON, pytorch-3dunet, SHINE and TA-GAN
YAML); this is the one place that opens, parses and shape-checks those files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from scopert.errors import ConfigError

YAML_SUFFIXES = (".yaml", ".yml")


def read_config_file(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The mapping in ``path`` (YAML for .yaml/.yml, JSON otherwise).

    ``what`` names the file the user should pass (e.g. "a pytorch-3dunet training YAML"); every error
    message ends with it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass {what}.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not a UTF-8 text file ({exc.reason} at byte {exc.start}); pass {what}.") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config {path} ({exc.strerror or exc}); pass {what}.") from None
    is_yaml = path.suffix.lower() in YAML_SUFFIXES
    try:
        if is_yaml:
            import yaml

            # libyaml's parser when present: the same safe loader, ten times faster on a large or deep file
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        else:
            data = json.loads(text)
    except RecursionError:
        raise ConfigError(f"{path} nests lists or mappings too deeply to be a config; pass {what}.") from None
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError, ValueError for a 5000-digit integer
        detail = str(exc).replace("\n", " ")[:300]
        raise ConfigError(f"{path} is not valid {'YAML' if is_yaml else 'JSON'} ({detail}); fix the syntax or pass "
                          f"{what}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of options, got {type(data).__name__}; pass {what}.")
    return data


def check_option_types(data: dict[str, Any], schema: type, where: str,
                       overrides: dict[str, str] | None = None) -> None:
    """Refuse an option whose value does not have the type its field in the dataclass ``schema`` declares.

    Config files are hand-edited: ``"epochs": "30"``, ``height: 128`` for a list, or ``lr: .nan`` must be a
    ConfigError naming the key, never a TypeError deep inside training. Understood annotations: ``int``,
    ``float`` (finite; ints accepted), ``bool``, ``str``, ``list[T]``, ``dict[K, V]``, ``A | B``, ``None``;
    anything else (``Any``) is accepted. ``overrides`` gives an annotation for fields typed ``Any``.
    Keys not in ``schema`` are left to the caller's unknown-key check.
    """
    fields = {f.name: str(f.type) for f in dataclasses.fields(schema)}
    fields.update(overrides or {})
    for key, value in data.items():
        annotation = fields.get(key)
        if annotation is not None and not _matches(value, annotation):
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise ConfigError(f"{where}: {key} must be {_describe(annotation)}, got {shown}.")


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets: 'dict[str, int] | None' -> ['dict[str, int] ', ' None']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def _matches(value: Any, annotation: str) -> bool:
    alternatives = [a.strip() for a in _split_top(annotation, "|")]
    if len(alternatives) > 1:
        return any(_matches(value, a) for a in alternatives)
    ann = alternatives[0]
    if ann == "None":
        return value is None
    if ann == "bool":
        return isinstance(value, bool)
    if ann == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if ann == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ann == "str":
        return isinstance(value, str)
    if ann.startswith("list[") and ann.endswith("]"):
        return isinstance(value, list) and all(_matches(v, ann[5:-1]) for v in value)
    if ann.startswith("dict[") and ann.endswith("]"):
        key_ann, value_ann = (a.strip() for a in _split_top(ann[5:-1], ","))
        return isinstance(value, dict) and all(_matches(k, key_ann) and _matches(v, value_ann)
                                               for k, v in value.items())
    return True


def _describe(annotation: str) -> str:
    alternatives = [a.strip() for a in _split_top(annotation, "|")]
    if len(alternatives) > 1:
        return " or ".join(_describe(a) for a in alternatives)
    ann = alternatives[0]
    simple = {"None": "null", "bool": "true or false", "int": "an integer", "float": "a finite number",
              "str": "a string"}
    if ann in simple:
        return simple[ann]
    if ann.startswith("list["):
        return f"a list of {_describe(ann[5:-1]).replace('an ', '').replace('a ', '')}s"
    if ann.startswith("dict["):
        return "a mapping"
    return ann
