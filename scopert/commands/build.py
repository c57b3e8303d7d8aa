"""``scopert build MODEL.onnx --tile Z,Y,X --batch N``: a strongly typed TensorRT engine in engines/.

Thin: checks every option against the model's card (tile vs divisor and halo, batch, workspace, the engine
store's folder and free space) before TensorRT is imported, then calls
``scopert.export.trt_builder.build_engine``. Without TensorRT or a GPU it exits 2 with a message that names
what is missing and that ONNX Runtime runs the model instead.
"""

from __future__ import annotations

from pathlib import Path

import click

ENGINE_SIZE_FACTOR = 2  # an engine holds the weights (at most FP32, as the ONNX) plus tactic data; 2x is ample


def check_build_args(model_path, tile, batch, out_dir, workspace_gb) -> tuple[int, ...]:
    """Every argument of ``scopert build``, checked against the model's card before TensorRT is touched."""
    import os

    from scopert.commands import preflight as pf

    card = pf.model_card(model_path, "MODEL_PATH")
    spatial = card.input.spatial_axes
    sizes = pf.parse_sizes(tile, "--tile", spatial)
    pf.check_tile(card, sizes, spatial, "--tile")
    pf.check_count(batch, "--batch")
    pf.check_positive(workspace_gb, "--workspace", "4")
    pf.check_output_folder(out_dir, "-o/--out-dir")
    pf.check_space(Path(out_dir) / "engine", ENGINE_SIZE_FACTOR * os.path.getsize(model_path),
                   f"the engine of {Path(model_path).name}")
    return sizes


@click.command()
@click.argument("model_path", type=click.Path(exists=True))
@click.option("--tile", required=True, help="Spatial tile the engine is tuned for, e.g. 16,256,256 (Z,Y,X) or 256,256.")
@click.option("--batch", type=int, default=1, show_default=True, help="Tiles per inference call (profile max).")
@click.option("-o", "--out-dir", default="engines", show_default=True, type=click.Path(), help="Engine store.")
@click.option("--workspace", "workspace_gb", type=float, default=4.0, show_default=True, help="Workspace limit, GiB.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="TensorRT builder optimization level (0 fastest build .. 5 slowest, best tactics).")
@click.option("--rebuild", is_flag=True, help="Build even when a matching engine is cached.")
@click.option("--show-polygraphy", is_flag=True,
              help="Print the equivalent `polygraphy convert ...` command line (NVIDIA's tool) and build nothing.")
def build(model_path, tile, batch, out_dir, workspace_gb, opt_level, rebuild, show_polygraphy) -> None:
    """Build a TensorRT engine (10.12+/11.x, strongly typed: FP16 comes from the ONNX) with its sidecar card."""
    sizes = check_build_args(model_path, tile, batch, out_dir, workspace_gb)
    if show_polygraphy:
        from scopert.export.trt_builder import show_polygraphy as command

        click.echo(command(model_path, sizes, batch, out_dir=out_dir, workspace_gb=workspace_gb, opt_level=opt_level))
        return

    from scopert.export.trt_builder import build_engine

    result = build_engine(model_path, sizes, batch, out_dir=out_dir, workspace_gb=workspace_gb, opt_level=opt_level,
                          rebuild=rebuild)
    what = "reused cached" if result.reused else f"built in {result.build_seconds:.1f} s:"
    click.echo(f"{what} {result.engine_path} (card {result.card_path.name}, key {result.key.digest()}, "
               f"{result.key.precision}, profile {result.key.profile.min}..{result.key.profile.max})", err=True)


command = build
