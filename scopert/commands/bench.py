"""``scopert bench``: one model's backend throughput, pipeline efficiency, optional bf16 gate, and a
verdict against camera data rates (sCMOS 2048x2048 16-bit at 100 fps = 0.84 GB/s, and a user rate).

Every argument (sizes against the model's card, the --json path, --data's header) is checked before the
model loads (``check_bench_args``), so a typo costs a second, not a benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import click

from scopert.commands.util import backend_option
from scopert.errors import ConfigError

SCMOS_BYTES_PER_S = 2048 * 2048 * 2 * 100  # 0.84 GB/s


def camera_verdicts(voxels_per_s: float, user_mb_s: float | None) -> dict[str, str]:
    """Whether a 16-bit stream at the measured voxel rate keeps up with each camera rate."""
    have = voxels_per_s * 2
    rates = {"sCMOS 2048^2 16-bit 100 fps (838.9 MB/s)": SCMOS_BYTES_PER_S}
    if user_mb_s:
        rates[f"user rate ({user_mb_s:g} MB/s)"] = user_mb_s * 1e6
    return {name: (f"keeps up ({have / need:.2f}x)" if have >= need else
                   f"does NOT keep up ({have / need:.3f}x; needs {need / have:.1f}x faster)")
            for name, need in rates.items()}


def default_shape(tiled_axes: str) -> tuple[int, ...]:
    """A typical acquisition for the model's tiled axes: a 3D stack, a 2048^2 camera frame, or a movie."""
    sizes = {"z": 64, "t": 64, "y": 512 if "z" in tiled_axes else (1024 if "t" in tiled_axes else 2048)}
    sizes["x"] = sizes["y"]
    return tuple(sizes[a] for a in tiled_axes)


def check_bench_args(model_path, shape, tile, batch, repeats, data_path, gate_db, user_rate,
                     json_path) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """Every argument of ``scopert bench``, checked before the model loads: (--shape sizes, -B sizes)."""
    import math

    from scopert.commands import preflight as pf
    from scopert.runtime.layout import layouts

    card = pf.model_card(model_path, "MODEL_PATH")
    tiled = layouts(card)[0].tiled
    pf.check_count(batch, "--batch")
    pf.check_count(repeats, "--repeats")
    pf.check_positive(user_rate, "--rate", "800")
    if gate_db is not None and not math.isfinite(gate_db):
        raise ConfigError(f"--gate-db {gate_db} must be a finite PSNR in dB, e.g. --gate-db 45.")
    shape_sizes = pf.parse_sizes(shape, "--shape", tiled)
    tile_sizes = pf.parse_sizes(tile, "-B", tiled)
    if tile_sizes is not None:
        pf.check_tile(card, tile_sizes, tiled, "-B")
    if data_path and shape:
        raise ConfigError(f"--shape sizes a synthetic input, and --data {data_path} gives a real one whose shape is "
                          "its own; drop one of them (crop the file to bench a smaller piece of it).")
    if data_path:
        header = pf.image_header(pf.check_input_file(data_path, "--data"), "--data")
        if len(header.shape) < len(tiled):
            raise ConfigError(f"--data {data_path} has {len(header.shape)} axes {header.shape}; the model tiles "
                              f"{len(tiled)} ({tiled!r}): give an image with those axes.")
    if json_path:
        pf.check_output_file(json_path, "--json", pf.JSON_OUT, inputs=(model_path, data_path))
    return shape_sizes, tile_sizes


@click.command()
@click.argument("model_path", type=click.Path(exists=True))
@click.option("--shape", help="Shape of the synthetic input for the pipeline figure, in the model's tiled axes "
                               "(default: 64,512,512 for 3D, 2048,2048 for 2D, 64 frames of 1024x1024 for 2D+t).")
@click.option("-B", "--tile", help="Tile shape (default: the model's).")
@click.option("--batch", type=int, default=1)
@click.option("--tune", is_flag=True, help="Sweep tile sizes and batches first; bench the fastest (core voxels/s).")
@click.option("--compare", is_flag=True, help="Also run ORT FP32, OpenVINO f32 (and bf16 where the CPU has it) side "
                                              "by side on one tile batch: speed ratios and PSNR vs ORT.")
@click.option("--repeats", type=int, default=3, help="Repeats of the raw tile-batch loop.")
@click.option("--stitch", type=click.Choice(["auto", "crop", "blend"]), default="crop")
@backend_option()
@click.option("--precision", type=click.Choice(["auto", "f32", "bf16", "int8"]), default="auto", show_default=True,
              help="auto: bf16 where the CPU has it and the card records a passed bf16 gate, else f32.")
@click.option("--data", "data_path", type=click.Path(exists=True),
              help="A real image: the bf16 accuracy gate runs on its tiles (and the pipeline figure on it).")
@click.option("--gate-db", type=float, default=45.0, show_default=True, help="bf16 gate: minimum PSNR vs f32.")
@click.option("--rate", "user_rate", type=float, help="Your camera's data rate in MB/s for a second verdict.")
@click.option("--json", "json_path", type=click.Path(), help="Also write the results as JSON.")
def bench(model_path, shape, tile, batch, tune, compare, repeats, stitch, backend, precision, data_path, gate_db, user_rate,
          json_path) -> None:
    """Backend and pipeline throughput for one model, and whether it keeps up with a camera."""
    shape_sizes, tile_sizes = check_bench_args(model_path, shape, tile, batch, repeats, data_path, gate_db, user_rate,
                                               json_path)

    import numpy as np

    from scopert.runtime import load
    from scopert.runtime.tools.bench import bench_pipeline, compare_engines, run_roofline, tune_tile

    volume = None
    if data_path:
        from scopert.runtime.io import read_image

        with read_image(data_path) as img:
            volume = np.asarray(img.array)
    if volume is not None:
        spatial = len(load(model_path, backend="ort", device="cpu").in_layout.tiled)
        while volume.ndim > spatial:  # a stack of images: bench on the first one
            volume = np.asarray(volume[0])
    model = load(model_path, backend=backend, precision=precision, calibration=volume, gate_db=gate_db)
    shp = volume.shape if volume is not None else (shape_sizes or default_shape(model.in_layout.tiled))
    sweep = None
    if tune:
        internal, _, _ = model.prepare(volume if volume is not None else np.zeros(shp, np.uint16))
        sweep = tune_tile(model, dict(zip(model.in_layout.tiled, internal.shape[1:])))
        tile_sizes, batch = tuple(sweep["pick"]["tile"].values()), sweep["pick"]["batch"]
        for row in sweep["rows"]:
            click.echo(f"  tile {row['tile']} batch {row['batch']}: {row['core_voxels_per_s'] / 1e6:.2f} Mvox/s (core)")
        click.echo(f"  auto-tuner pick: tile {sweep['pick']['tile']}, batch {batch}")
    result = bench_pipeline(model, shp, tile_sizes, batch=batch, stitch=stitch, repeats=repeats, volume=volume)
    if sweep is not None:
        result["tile_sweep"] = sweep
    if compare:
        result["engines"] = compare_engines(model_path, model, dict(zip(model.in_layout.tiled, result["tile"])), batch,
                                            repeats)
        for name, row in result["engines"]["engines"].items():
            accuracy = "reference" if row["psnr_vs_ort_db"] is None else f"PSNR vs ORT {row['psnr_vs_ort_db']} dB"
            roof = (f", {row['roofline_gflops']} GFLOP/s = {row['roofline_fraction_of_peak']} of the "
                    f"{row['roofline_peak_gflops']} GFLOP/s peak" if row.get("roofline_fraction_of_peak") is not None
                    else "")
            click.echo(f"  {name:>14}: {row['seconds']:.4f} s per batch, {row['x_ort']:.2f}x ORT FP32, {accuracy}{roof}")
        roofline = result["engines"].get("roofline")
        if roofline:
            click.echo(f"  {'roofline':>14}: {roofline['flops']['flops_per_voxel'] / 1e6:.4g} MFLOP per output voxel "
                       f"({roofline['flops']['rule']}); peaks: " + ", ".join(
                           f"{p} {v['gflops']} GFLOP/s ({v['how']})" for p, v in roofline["peaks"].items()))
        for name, note in result["engines"]["notes"].items():
            click.echo(f"  {name:>14}: {note}")
    result["chosen"] = {"backend": model.backend.info.name, "precision": model.backend.info.precision,
                        "why": model.backend.info.reason}
    gate = getattr(model, "precision_decision", None)
    if gate is not None:
        result["bf16_gate"] = gate.as_dict()
    result["roofline"] = run_roofline(model_path, model, result)
    result["camera_verdicts"] = camera_verdicts(result["pipeline_voxels_per_s"], user_rate)
    for key, value in result.items():
        if key not in ("engines", "tile_sweep"):  # printed above as rows
            click.echo(f"{key:>28}: {value}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=str))


command = bench
