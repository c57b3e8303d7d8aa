"""``scopert bench``: raw backend throughput against the whole pipeline on a volume."""

from __future__ import annotations

import json
from pathlib import Path

import click

from scopert.commands.util import parse_ints


@click.command()
@click.argument("model_path", type=click.Path(exists=True))
@click.option("--shape", default="64,512,512", help="Volume shape for the pipeline figure.")
@click.option("-B", "--tile", help="Tile shape (default: the model's).")
@click.option("--batch", type=int, default=1)
@click.option("--repeats", type=int, default=3, help="Repeats of the raw tile-batch loop.")
@click.option("--stitch", type=click.Choice(["auto", "crop", "blend"]), default="crop")
@click.option("--json", "json_path", type=click.Path(), help="Also write the results as JSON.")
def bench(model_path, shape, tile, batch, repeats, stitch, json_path) -> None:
    """Raw backend throughput on tile batches vs the whole pipeline on a volume (pipeline efficiency)."""
    from scopert.runtime import load
    from scopert.runtime.bench import bench_pipeline

    model = load(model_path)
    result = bench_pipeline(model, parse_ints(shape, "--shape"), parse_ints(tile, "-B"), batch=batch, stitch=stitch,
                            repeats=repeats)
    for key, value in result.items():
        click.echo(f"{key:>28}: {value}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))


command = bench
