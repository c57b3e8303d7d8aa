"""Reading a training or import config file: one JSON or YAML mapping, with errors that name the fix.

Every family reads its seed's config format (3D-RCAN and CNNT JSON, pytorch-3dunet, SHINE and TA-GAN
YAML); this is the one place that opens, parses and shape-checks those files.
"""

from __future__ import annotations

import json
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
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config {path} ({exc}); pass {what}.") from None
    is_yaml = path.suffix.lower() in YAML_SUFFIXES
    try:
        if is_yaml:
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise ConfigError(f"{path} is not valid {'YAML' if is_yaml else 'JSON'} ({exc}); fix the syntax or pass "
                          f"{what}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of options, got {type(data).__name__}; pass {what}.")
    return data
