"""Small parsing helpers shared by the CLI commands."""

from __future__ import annotations

from scopert.errors import ConfigError


def parse_ints(value: str | None, what: str) -> tuple[int, ...] | None:
    """'16,256,256' (or '16x256x256') -> (16, 256, 256); None stays None."""
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not a comma-separated list of integers, e.g. 16,256,256.") from None

