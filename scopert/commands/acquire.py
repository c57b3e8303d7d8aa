"""``scopert acquire``: run a useq MDA sequence on a microscope (a Micro-Manager configuration) or on a replay
camera, restoring every frame as it arrives; raw and restored frames go into one OME-Zarr store (or, -o OUT.tif, one
TIFF hyperstack written at the end).

``--camera replay:MOVIE.tif[:FPS]`` plays a real recording (its planes in file order, looping) at FPS frames per
second, so a lab rehearses a run before the microscope. Everything (the sequence, the model, the camera's file,
the output) is checked before the MDA starts; the end prints the keep-up verdict, latency p50/p99 and the exact
counts, as ``scopert stream`` does. Ctrl-C ends the MDA cleanly: what arrived is written and closed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from scopert.commands.util import backend_option
from scopert.errors import ConfigError, InputError

log = logging.getLogger(__name__)


def parse_camera(camera: str | None, mm_config: str | None) -> Any:
    """``--camera replay:FILE[:FPS]`` or ``--mm-config CFG`` (exactly one), checked."""
    from scopert.acquisition.cores import CameraSpec
    from scopert.commands import preflight as pf
    from scopert.runtime.tools.replay import check_rate

    if bool(camera) == bool(mm_config):
        raise ConfigError("give the microscope as --mm-config CFG (a Micro-Manager configuration) or a rehearsal "
                          "camera as --camera replay:MOVIE.tif[:FPS]; exactly one of them.")
    if mm_config:
        return CameraSpec("mm-config", pf.check_input_file(mm_config, "--mm-config", (".cfg",)))
    kind, _, rest = camera.partition(":")
    if kind != "replay" or not rest:
        raise ConfigError(f"--camera {camera}: use replay:MOVIE.tif or replay:MOVIE.tif:FPS (frames per second).")
    path, fps = rest, None
    head, _, tail = rest.rpartition(":")
    if head and tail.replace(".", "", 1).isdigit():
        path, fps = head, check_rate(tail)
    return CameraSpec("replay", pf.check_input_file(path, "--camera replay:"), fps)


@click.command(name="acquire")
@click.option("-m", "--model", "model_path", required=True, type=click.Path(), help="An .onnx model.")
@click.option("--sequence", "sequence_path", required=True, type=click.Path(),
              help="A useq-schema MDA sequence (.yaml or .json): time, z and channel plans.")
@click.option("-o", "--output", "output_path", required=True, type=click.Path(),
              help="OUT.zarr: raw and restored frames (OUT.zarr/raw, OUT.zarr/restored), written as they arrive; "
                   "or OUT.tif / OUT.ome.tif: one hyperstack with Raw and Restored channels, written at the end.")
@click.option("--mm-config", type=click.Path(), help="A Micro-Manager configuration (.cfg) for the microscope.")
@click.option("--camera", help="replay:MOVIE.tif[:FPS]: a camera that plays a recording (a rehearsal).")
@click.option("--on-full", type=click.Choice(["drop", "block"]), default="drop", show_default=True,
              help="When inference falls behind: drop the frame from restoration (counted; raw is still written) "
                   "or hold the MDA back.")
@click.option("--max-queue", type=int, default=4, show_default=True, help="Frames waiting for inference.")
@click.option("--ngff", type=click.Choice(["0.4", "0.5"]), default=None,
              help="OME-Zarr version: 0.4 (Zarr v2, the default) or 0.5 (Zarr v3).")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.zarr.")
@backend_option()
@click.option("--precision", type=click.Choice(["auto", "f32", "bf16", "int8"]), default="f32", show_default=True,
              help="f32, or bf16/int8 where the card records a passed gate; auto: bf16 only where the card allows.")
@click.option("--json", "json_path", type=click.Path(), help="Also write the report as JSON.")
def acquire(model_path, sequence_path, output_path, mm_config, camera, on_full, max_queue, ngff, overwrite, backend,
            precision, json_path) -> None:
    """Run an MDA and restore its frames as they arrive (Micro-Manager via pymmcore-plus, or a replay camera)."""
    from scopert.acquisition import read_sequence
    from scopert.acquisition.restorer import restore_mode
    from scopert.commands import preflight as pf

    pf.check_count(max_queue, "--max-queue")
    spec = parse_camera(camera, mm_config)
    sequence = read_sequence(sequence_path)
    restore_mode(pf.model_card(model_path, "-m"), sequence, f"-m {model_path}")
    output = pf.check_output_path(output_path, (model_path, sequence_path, spec.path), option="-o",
                                  suffixes=(".zarr", ".tif", ".tiff"), folder="creatable")
    if output.suffix.lower() != ".zarr" and ngff is not None:
        raise ConfigError(f"--ngff {ngff} is for OME-Zarr outputs; -o {output} is a TIFF: drop --ngff or write "
                          "OUT.zarr.")
    if output.exists() and not overwrite:
        raise ConfigError(f"-o {output} exists; add --overwrite to replace it, or choose another name.")
    json_out = pf.check_output_file(json_path, "--json", pf.JSON_OUT, inputs=(output,)) if json_path else None
    output.parent.mkdir(parents=True, exist_ok=True)

    from scopert.acquisition import attach
    from scopert.acquisition.cores import make_core
    from scopert.runtime import load

    core = make_core(spec)
    model = load(model_path, backend=backend, precision=precision)
    click.echo(f"model {Path(model_path).name}: {model.card.family}, {model.backend.info.name} "
               f"({model.backend.info.precision}); sequence {dict(sequence.sizes)}", err=True)
    pipeline_log = logging.getLogger("scopert.runtime.pipeline")  # one INFO line per frame otherwise
    level = pipeline_log.level
    pipeline_log.setLevel(logging.WARNING)
    interrupted = None
    restorer = None
    try:
        with attach(core, model, sequence, output, ngff=ngff or "0.4", on_full=on_full,
                    max_queue=max_queue) as restorer:
            _run_mda(core, sequence)
    except KeyboardInterrupt as exc:  # attach ended the MDA and wrote and closed what arrived
        if restorer is None:
            raise
        interrupted = exc
    finally:
        pipeline_log.setLevel(level)
    report = restorer.report
    _print(report)
    if json_out:
        json_out.write_text(json.dumps(report.as_dict(), indent=2))
    if interrupted is not None:
        raise interrupted
    if report.error:
        raise InputError(f"inference failed during the acquisition ({report.error}); every raw frame is in "
                         f"{output}/raw, {report.restored} restored frames in {output}/restored.")


def _run_mda(core: Any, sequence: Any) -> None:
    """Run the MDA in pymmcore-plus's own thread so that Ctrl-C reaches this one at once (a camera's sleep or a
    device call inside the MDA would hold it off), then cancel the MDA and wait for it to end."""
    thread = core.run_mda(sequence)
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        core.mda.cancel()
        thread.join()
        raise


def _print(report: Any) -> None:
    verdict = ("kept up" if report.kept_up else
               f"did NOT keep up: {report.dropped} dropped, {report.failed} failed, {report.unfinished} unfinished")
    click.echo(f"{'verdict':>22}: {verdict}")
    for key, value in report.as_dict().items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        click.echo(f"{key:>22}: {value}")


command = acquire
