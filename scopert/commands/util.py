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



def backend_option(default: str = "auto"):
    """``--backend``: auto and every backend in ``scopert.runtime.backends.base.REGISTRY``, read when click first
    needs the choices (help or parsing), so importing the CLI does not import the runtime."""
    import click

    class BackendChoice(click.Choice):
        def __init__(self) -> None:
            super().__init__(())

        @property
        def choices(self):  # type: ignore[override]
            from scopert.runtime.backends.base import backend_choices

            return backend_choices()

        @choices.setter
        def choices(self, value) -> None:  # click's __init__ assigns; the registry is the only source
            pass

    return click.option("--backend", type=BackendChoice(), default=default, show_default=True,
                        help="Inference backend (auto picks a built engine, ORT CUDA, OpenVINO, ORT CPU).")
