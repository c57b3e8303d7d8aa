"""Errors a user can cause. Each message says what was wrong and what to do about it.

The CLI prints these without a traceback and exits with ``exit_code``: 2 for bad usage or input,
1 for a run that failed. Imports nothing outside the standard library.
"""

from __future__ import annotations


class ScopertError(Exception):
    """Base class of every error that a user can cause and fix."""

    exit_code = 2


class InputError(ScopertError):
    """The input data is unusable: wrong axes, dtype, NaN/Inf, empty, unreadable or corrupt."""


class ConfigError(ScopertError):
    """A config file, option or argument is wrong (unknown key, out-of-range value, bad tile)."""


class CardError(ScopertError):
    """A ModelCard is missing, malformed, or disagrees with the model file."""


class CheckpointError(ScopertError):
    """A checkpoint cannot be imported: wrong family, missing keys, mismatching shapes."""


class OutputError(ScopertError):
    """An output cannot be written where asked (same as input, unwritable folder)."""


class BackendError(ScopertError):
    """An inference backend is missing, fell back silently, or cannot run this model."""


class RunError(ScopertError):
    """A run failed part way for a reason outside the user's input."""

    exit_code = 1
