"""``scopert stream --replay FILE --fps N``: replay a recorded 2D+t stack as a camera would, and say
whether the runtime kept up (latency p50/p99, queue depth, exact drops)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="stream")
@click.option("--replay", "replay_path", required=True, type=click.Path(), help="A 2D+t stack (t, y, x) to replay.")
@click.option("--fps", type=float, required=True, help="Frame rate to replay at (frames per second, > 0).")
@click.option("-m", "--model", "model_path", required=True, type=click.Path(), help="An .onnx model.")
@click.option("-o", "--output", "output_path", required=True, type=click.Path(), help="Output TIFF, written as it goes.")
@click.option("--on-full", type=click.Choice(["drop", "block"]), default="drop", show_default=True,
              help="When the queue is full: drop the frame (counted) or hold the camera back.")
@click.option("--max-queue", type=int, default=4, show_default=True, help="Frames the queue holds.")
@click.option("--backend", type=click.Choice(["auto", "ort", "openvino"]), default="auto")
@click.option("--precision", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True)
@click.option("--frames", "n_frames", type=int, help="Replay only the first N frames.")
@click.option("--json", "json_path", type=click.Path(), help="Also write the report as JSON.")
def stream(replay_path, fps, model_path, output_path, on_full, max_queue, backend, precision, n_frames,
           json_path) -> None:
    """Replay a real stack through the streaming API at a camera's frame rate."""
    from scopert.runtime import load
    from scopert.runtime.replay import check_rate, read_replay_stack, replay

    fps = check_rate(fps)
    frames = read_replay_stack(replay_path)
    if n_frames:
        frames = frames[:n_frames]
    model = load(model_path, backend=backend, precision=precision,
                 calibration=frames[0] if precision == "bf16" else None)
    click.echo(f"model {Path(model_path).name} on {model.backend.info.name} ({model.backend.info.precision}): "
               f"{model.backend.info.reason}", err=True)
    report = replay(model, frames, fps, on_full=on_full, max_queue=max_queue, output=output_path)
    for key, value in report.as_dict().items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        click.echo(f"{key:>16}: {value}")
    if json_path:
        Path(json_path).write_text(json.dumps(report.as_dict(), indent=2))


command = stream
