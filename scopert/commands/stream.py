"""``scopert stream --replay FILE --fps N``: replay a recorded 2D+t stack as a camera would, and say
whether the runtime kept up (latency p50/p99, queue depth, exact drops).

Every argument, both files' layouts, the output folder and the disk space are checked before the movie is
read or a frame runs (``plan_stream``). ``--loop --frames N`` repeats a short recording for a long soak;
``--no-output`` restores and discards (a soak measures the runtime, not a disk filling up).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import click

from scopert.commands.util import backend_option
from scopert.errors import ConfigError, ScopertError

TIFF_PAGE_OVERHEAD = 512  # bytes per page (IFD, tags) on top of the pixels of a BigTIFF page


@dataclass(frozen=True)
class StreamPlan:
    """What a stream run was checked to be able to do, before anything heavy is loaded."""

    fps: float
    total: int  # frames offered
    movie_frames: int
    output: Path | None
    json_path: Path | None


def plan_stream(replay_path, fps, model_path, output_path, no_output, max_queue, n_frames, loop,
                json_path) -> StreamPlan:
    """Check every argument of ``scopert stream`` and return the plan; reads file headers only."""
    from scopert.commands import preflight as pf
    from scopert.runtime.tools.replay import check_rate, check_replay_layout

    fps = check_rate(fps)
    pf.check_count(max_queue, "--max-queue")
    pf.check_count(n_frames, "--frames")
    if loop and not n_frames:
        raise ConfigError("--loop repeats the movie until --frames frames were offered; add --frames N "
                          "(e.g. --frames 36000 for one hour at 10 fps).")
    if no_output and output_path:
        raise ConfigError(f"-o {output_path} and --no-output contradict each other; give one of them.")
    if not no_output and not output_path:
        raise ConfigError("give -o OUT.tif for the restored frames, or --no-output to discard them (soak tests).")
    movie = pf.check_input_file(replay_path, "--replay")
    header = pf.image_header(movie, "--replay")
    try:
        check_replay_layout(movie, header.shape, header.axes, header.source_axes)
    except ScopertError as exc:
        raise type(exc)(f"--replay {exc}") from None
    card = pf.model_card(model_path, "-m")
    if "z" in card.input.axes:
        raise ConfigError(f"-m {model_path} is a 3D model ({card.input.axes}); a replay streams 2D frames: use a 2D "
                          "(bcyx) or 2D+t (btcyx) model.")
    if "c" in card.input.axes and card.input.channels != 1:
        raise ConfigError(f"-m {model_path} takes {card.input.channels} channels per frame; a replay streams "
                          "single-channel frames: use a one-channel model.")
    movie_frames, height, width = header.shape
    total = n_frames or movie_frames
    if total > movie_frames and not loop:
        raise ConfigError(f"--frames {total} is more than the {movie_frames} frames of {movie.name}; add --loop to "
                          "repeat the movie, or ask for fewer frames.")
    window = int(card.input.time_window or 1)
    if total < window:
        raise ConfigError(f"--frames {total}: the model needs windows of {window} frames; stream at least {window}.")
    output = None
    if output_path:
        output = pf.check_output_file(output_path, "-o", pf.TIFF_OUT, inputs=(movie, model_path))
        scale = card.output.scale
        page = int(height * scale.get("y", 1.0)) * int(width * scale.get("x", 1.0)) * 4 * card.output.channels
        pf.check_space(output, total * (page + TIFF_PAGE_OVERHEAD), f"-o {output} ({total} float32 frames)")
    json_out = None
    if json_path:
        json_out = pf.check_output_file(json_path, "--json", pf.JSON_OUT, inputs=(movie, model_path, output))
    return StreamPlan(fps, total, movie_frames, output, json_out)


@click.command(name="stream")
@click.option("--replay", "replay_path", required=True, type=click.Path(), help="A 2D+t stack (t, y, x) to replay.")
@click.option("--fps", type=float, required=True, help="Frame rate to replay at (frames per second, > 0).")
@click.option("-m", "--model", "model_path", required=True, type=click.Path(), help="An .onnx model.")
@click.option("-o", "--output", "output_path", type=click.Path(), help="Output TIFF, written as it goes.")
@click.option("--no-output", is_flag=True, help="Restore the frames and discard them (no -o): for soak tests.")
@click.option("--on-full", type=click.Choice(["drop", "block"]), default="drop", show_default=True,
              help="When the queue is full: drop the frame (counted) or hold the camera back.")
@click.option("--max-queue", type=int, default=4, show_default=True, help="Frames the queue holds.")
@backend_option()
@click.option("--precision", type=click.Choice(["auto", "f32", "bf16", "int8"]), default="auto", show_default=True,
              help="auto: bf16 where the CPU has it and the card records a passed bf16 gate, else f32.")
@click.option("--frames", "n_frames", type=int, help="Replay N frames (the first N; with --loop, N in all).")
@click.option("--loop", is_flag=True, help="Repeat the movie until --frames frames were offered.")
@click.option("--json", "json_path", type=click.Path(), help="Also write the report as JSON.")
def stream(replay_path, fps, model_path, output_path, no_output, on_full, max_queue, backend, precision, n_frames,
           loop, json_path) -> None:
    """Replay a real stack through the streaming API at a camera's frame rate."""
    plan = plan_stream(replay_path, fps, model_path, output_path, no_output, max_queue, n_frames, loop, json_path)

    from scopert.runtime import load
    from scopert.runtime.tools.replay import read_replay_stack, replay

    frames = read_replay_stack(replay_path)
    physical = None
    if plan.output is not None:  # the movie's pixel size, after the model's scale, goes into the output
        from scopert.runtime.io import read_image

        with read_image(replay_path) as movie:
            physical = movie.physical
    if plan.total < len(frames):
        frames = frames[:plan.total]
    model = load(model_path, backend=backend, precision=precision,
                 calibration=frames[:16] if precision in ("bf16", "auto") else None)  # gate tiles: real frames
    click.echo(f"model {Path(model_path).name}: {model.card.family}, {model.backend.info.name} "
               f"({model.backend.info.precision})", err=True)
    # The pipeline logs one INFO line per predict call: one per frame here, 36000 lines an hour. Keep them for -v.
    pipeline_log = logging.getLogger("scopert.runtime.pipeline")
    level = pipeline_log.level
    if not click.get_current_context().find_root().params.get("verbose"):
        pipeline_log.setLevel(logging.WARNING)
    try:
        if physical:
            physical = physical.scaled(model.card.output.scale).for_axes("tyx")
        report = replay(model, frames, plan.fps, on_full=on_full, max_queue=max_queue, output=plan.output,
                        total=plan.total, physical=physical)
    finally:
        pipeline_log.setLevel(level)
    for key, value in report.as_dict().items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, list):
            value = ", ".join(f"{v:.4g}" for v in value[:50]) + (f" ... ({len(value)})" if len(value) > 50 else "")
        click.echo(f"{key:>20}: {value}")
    if plan.json_path:
        plan.json_path.write_text(json.dumps(report.as_dict(), indent=2))


command = stream
