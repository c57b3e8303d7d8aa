"""The ``scopert`` command line: thin parsing that calls into training, export and runtime.

Heavy imports happen inside the command that needs them, so ``scopert --help`` is instant. Errors a
user can cause (``ScopertError``) are printed without a traceback: exit 2 for bad input, 1 for a failed run.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from scopert.commands.util import backend_option
from scopert.commands.util import parse_ints as _tuple
from scopert.errors import ConfigError, InputError, ScopertError
from scopert.training.common.registry import FAMILIES


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="scopert")
def cli(verbose: int) -> None:
    """ScopeRT: microscopy restoration networks from training to tiled, streamed inference."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# ---- runtime ------------------------------------------------------------------------------------------
@cli.command()
@click.option("-m", "--model", "--model_dir", "model_path", required=True, type=click.Path(),
              help="An .onnx model (or engine) from `scopert export`.")
@click.option("-i", "--input", "input_path", required=True, type=click.Path(), help="Input image file or folder.")
@click.option("-o", "--output", "output_path", required=True, type=click.Path(), help="Output file or folder.")
@click.option("-g", "--ground_truth", "gt_path", type=click.Path(), help="Ground truth file or folder (adds a channel).")
@click.option("-b", "--bpp", "bits", type=click.Choice(["8", "16", "32"]), default="32", help="Output bit depth.")
@click.option("-B", "--block_shape", help="Tile shape, e.g. 16,256,256 (default: the model's).")
@click.option("-O", "--block_overlap_shape", help="Tile overlap for blend stitching, e.g. 2,32,32.")
@click.option("--normalize_output_range_between_zero_and_one", "normalize_output", is_flag=True)
@click.option("--rescale", is_flag=True, help="Affine least-squares fit of the output to the GT (as CARE).")
@click.option("-f", "--output_tiff_format", "fmt", type=click.Choice(["imagej", "ome"]),
              help="TIFF outputs: ImageJ hyperstack or OME-TIFF (default: OME for a .ome.tif name, else ImageJ).")
@click.option("--ngff", type=click.Choice(["0.4", "0.5"]), help="OME-Zarr outputs: NGFF 0.4 (Zarr v2, the default: "
              "Fiji/MoBIE, napari and ome-zarr-py read it) or 0.5 (Zarr v3).")
@click.option("--p_min", type=float, help="Lower input percentile (default: the card's).")
@click.option("--p_max", type=float, help="Upper input percentile (default: the card's).")
@click.option("--stitch", type=click.Choice(["auto", "crop", "blend"]), default="auto")
@backend_option()
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--batch", type=int, help="Tiles per inference call.")
@click.option("--axes", help="Input axes, e.g. zyx; required for an ONNX file without a card (then bczyx).")
@click.option("--dataset", help="HDF5/Zarr input dataset (default raw).")
@click.option("--precision", type=click.Choice(["auto", "f32", "bf16", "int8"]), default="auto", show_default=True,
              help="auto: bf16 where the CPU has it and the card records a passed bf16 gate, else f32. "
                   "bf16/int8 (OpenVINO) are refused where the CPU or the card's gate does not allow them.")
@click.option("--channels", "channels", type=click.Choice(["auto", "restored", "all"]), default="auto",
              show_default=True, help="What the output holds: auto = TIFF: normalized raw, restored and GT channels "
              "(3D-RCAN); HDF5/Zarr: restored and GT. restored = the restored image only. all = raw, restored, GT.")
@click.option("--raw-values", "raw_values", type=click.Choice(["normalized", "input"]), default="normalized",
              show_default=True, help="The raw channel: the normalized input (3D-RCAN) or the input's own values "
              "(needs -b 32).")
@click.option("--channel", "channel", type=int, help="Restore this one channel (0-based) of a multi-channel input "
              "with a 1-channel model.")
@click.option("--per-channel", "per_channel", is_flag=True, help="Restore each channel of a multi-channel input on "
              "its own with a 1-channel model; the output keeps the channels.")
@click.option("--suffix", "out_suffix", help="Folder mode: output suffix (.tif, .ome.tif, .h5, .zarr); default: "
              "the input's name.")
@click.option("--overwrite", is_flag=True, help="Replace an output that exists (default: refuse it; a folder run "
              "skips finished outputs, so an interrupted folder run resumes).")
@click.option("--cluster", help="Run on Dask: local:N, local-cuda[:0,1], tcp://HOST:PORT or a dask-jobqueue YAML "
              "(one volume -> OUT.zarr in blocks; a folder -> one task per file).")
@click.option("--block", "dist_block", help="--cluster: block size over the volume's tiled axes, e.g. 64,512,512.")
@click.option("--resume", is_flag=True, help="--cluster: go on from the finished blocks of an interrupted run.")
def apply(model_path, input_path, output_path, gt_path, bits, block_shape, block_overlap_shape, normalize_output,
          rescale, fmt, p_min, p_max, stitch, backend, device, batch, axes, dataset, precision, channels,
          raw_values, channel, per_channel, out_suffix, overwrite, cluster, dist_block, resume, ngff) -> None:
    """Restore an image or a folder of images (the options of 3D-RCAN's apply.py).

    Every path, option and size is checked before the first tile runs. A 2D model runs over every plane of
    a z-stack or time-lapse (the file's axes say which); the output keeps the input's axes."""
    from scopert.commands.apply_paths import check_paths, is_folder_run, plan_folder
    from scopert.progress import progress_bar
    from scopert.runtime import load
    from scopert.runtime.apply import ApplyOptions, plan_apply, run_apply

    model_axes = axes if axes and axes.startswith("b") else None
    opts = ApplyOptions(tile=_tuple(block_shape, "-B"), overlap=_tuple(block_overlap_shape, "-O"), stitch=stitch,
                        batch=batch, axes=None if model_axes else axes, bits=int(bits), fmt=fmt,
                        normalize_output=normalize_output, rescale=rescale, p_min=p_min, p_max=p_max,
                        dataset=dataset, channels=channels, raw_values=raw_values, channel=channel,
                        per_channel=per_channel, ngff=ngff)
    inp, out, gt = Path(input_path), Path(output_path), Path(gt_path) if gt_path else None
    out = check_paths(inp, out, gt, out_suffix, fmt, overwrite, ngff)  # before the model loads: a wrong path fails at once
    calibration = None
    if precision in ("bf16", "auto") and not cluster:  # without a gate in the card (or one recorded beside the
        # model), the bf16 gate measures on real tiles of the (first) input, and auto uses bf16 where it passed;
        # the input is read only when a gate must be measured
        from scopert.runtime.apply import calibration_sample, open_input
        from scopert.runtime.io import list_images

        def calibration():
            with open_input(list_images(inp)[0] if is_folder_run(inp) else inp, dataset) as first:
                return calibration_sample(first.array)
    model = load(model_path, backend=backend, device=device, axes=model_axes, precision=precision,
                 calibration=calibration)
    # A folder's files are all planned before the first runs; one file is planned (below) right before it runs.
    jobs = plan_folder(model, inp, out, gt, opts, out_suffix, overwrite) if is_folder_run(inp) else [(inp, out, gt)]
    info = model.backend.info
    click.echo(f"model {model_path}: {model.card.family}, {info.name} on {info.device}, {info.precision}", err=True)
    if cluster:  # scale-out: Dask is imported only here
        from scopert.scaleout.command import apply_on_cluster

        if precision in ("bf16", "int8"):
            raise ConfigError(f"--precision {precision} is not supported with --cluster; drop --precision.")
        apply_on_cluster(model, jobs, opts, cluster, block=_tuple(dist_block, "--block"), resume=resume,
                         backend=backend, device=device, folder=is_folder_run(inp))
        return
    if dist_block or resume:
        raise ConfigError("--block and --resume apply to --cluster runs; add --cluster (e.g. local:2) or drop them.")
    for src, dst, gt_file in jobs:
        with plan_apply(model, src, dst, gt_file, opts) as job, \
                progress_bar(job.n_tiles, src.name, unit="tile") as bar:
            result = run_apply(job, progress=bar.update)
        metrics = "".join(f"  PSNR {k.split('_')[1]} {v:.2f} dB" for k, v in result.metrics.items())
        click.echo(f"{src} -> {dst}  {result.shape}  {result.seconds:.2f} s  "
                   f"{result.voxels_per_s / 1e6:.2f} Mvox/s{metrics}", err=True)


@cli.command()
@click.argument("model_path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the whole card as JSON (for scripts).")
@click.option("--shape", help="An input's sizes in the model's tiled axes (e.g. 64,118,209): say the default tile "
                              "a run over it gets, its overhead and why.")
def info(model_path, as_json, shape) -> None:
    """Say what a model is and how it will run here; --json prints its whole card."""
    from scopert.commands.info import summary_lines
    from scopert.runtime import load
    from scopert.runtime.cpu import cpu_caps
    from scopert.runtime.selection.precision import decide

    from scopert.commands import preflight as pf

    # with --shape, opened as `apply` opens it (engine and precision auto), so the tile is the one a run gets
    model = load(model_path, precision="auto") if shape else load(model_path, backend="ort", device="cpu")
    sizes = pf.parse_sizes(shape, "--shape", model.in_layout.tiled) if shape else None
    if as_json:
        click.echo(model.card.to_json())
    else:
        for line in summary_lines(model.card, model.path.name):
            click.echo(line)
    caps = cpu_caps()
    auto = decide("auto", model.card, caps.bf16, caps.bf16_evidence, model.path)
    click.echo(f"precision auto on this CPU ({caps.model}): {auto.precision} ({auto.reason})", err=True)
    if sizes:
        _, why = model.tile_choice(dict(zip(model.in_layout.tiled, sizes)))
        click.echo(f"default tile for {'x'.join(map(str, sizes))}: {why}", err=True)


@cli.command()
@click.option("--gpu-check", "gpu_check", type=click.Path(exists=True),
              help="Build a TensorRT engine for MODEL.onnx, compare it with ORT FP32 on real tiles and benchmark it.")
@click.option("--calib", multiple=True, type=click.Path(exists=True), help="Real tiles for --gpu-check.")
@click.option("--reference", type=click.Path(exists=True), default=None,
              help="The FP32 ONNX that --gpu-check compares against (default: the one the FP16 card names).")
@click.option("--save-outputs", type=click.Path(), default=None,
              help="--gpu-check: also save the tiles and the engine's outputs (Polygraphy JSON) for --compare-saved.")
@click.option("--compare-saved", type=click.Path(), default=None,
              help="Compare a saved GPU run with ONNX Runtime FP32 here (no GPU needed); exit 1 if it fails.")
def doctor(gpu_check, calib, reference, save_outputs, compare_saved) -> None:
    """Report the Python environment, installed backends, the automatic backend choice and GPUs."""
    from scopert.doctor import environment_report

    if save_outputs and not gpu_check:
        raise ConfigError("--save-outputs saves a --gpu-check run; add --gpu-check MODEL.onnx.")
    for key, value in environment_report().items():
        click.echo(f"{key:>22}: {value}")
    if gpu_check:
        from scopert.export.gpu_check import run_gpu_check

        for key, value in run_gpu_check(gpu_check, list(calib) or None, reference_onnx=reference,
                                        save_outputs=save_outputs).items():
            click.echo(f"{key:>22}: {value}")
    if compare_saved:
        from scopert.errors import RunError
        from scopert.export.gpu_check import compare_saved as compare

        report = compare(compare_saved, reference_onnx=reference)
        for key, value in report.items():
            click.echo(f"{key:>22}: {value}")
        if report["verdict"] != "PASS":
            raise RunError(f"the saved GPU run fails against ONNX Runtime FP32: {report['verdict']}.")


# ---- training, import, export -------------------------------------------------------------------------
@cli.command()
@click.argument("family", type=click.Choice(sorted(FAMILIES)))
@click.option("-c", "--config", "config_path", required=True, type=click.Path(exists=True),
              help="The family's config (3D-RCAN config.json keys; pytorch-3dunet YAML; ...).")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(), help="Run folder.")
@click.option("--no-resume", is_flag=True, help="Refuse a run folder that already holds a run.")
def train(family, config_path, out_dir, no_resume) -> None:
    """Train a model family from a config into a run folder (resumes an interrupted run)."""
    from scopert.commands.preflight import check_train_args

    check_train_args(family, config_path, out_dir, no_resume)  # before torch loads or any data is read
    info = FAMILIES[family].load("trainer")(config_path, out_dir, resume=not no_resume)
    click.echo(f"run folder: {info.folder}", err=True)


@cli.command(name="import")
@click.argument("family", type=click.Choice(sorted(FAMILIES) + ["bioimageio"]))
@click.argument("path")
@click.option("-o", "--output", "--out", "out_dir", required=True, type=click.Path(), help="Run folder to write.")
@click.option("--config", "config_path", type=click.Path(exists=True),
              help="unet: the pytorch-3dunet YAML; cnnt: the run's JSON config.")
@click.option("--model", "model_name", help="blindspot: the SHINE model name, e.g. 3x3_blind.")
@click.option("--frames", type=int, help="blindspot: frames per window (frame_num).")
@click.option("--net-s", "net_s", type=click.Path(exists=True), help="tagan: the segmentation net N_net_S.pth.")
@click.option("--opt", "opt_txt", type=click.Path(exists=True), help="tagan: the seed's test_opt.txt.")
@click.option("--trust-checkpoint", "trust", is_flag=True,
              help="Let the full unpickler read objects beyond tensors; it can run code, so only for trusted files.")
@click.option("--weights", "weights_format", type=click.Choice(["onnx", "torchscript", "pytorch_state_dict"]),
              help="bioimageio: the weights to import (default: the first of onnx, torchscript, pytorch_state_dict).")
@click.option("--trust-package", is_flag=True, help="bioimageio: load a pytorch_state_dict package's architecture "
              "file (Python code from the package); only for packages you trust.")
def import_(family, path, out_dir, config_path, model_name, frames, net_s, opt_txt, trust, weights_format,
            trust_package) -> None:
    """Import a checkpoint of the original repository into a run folder.

    rcan: a 3D-RCAN Keras .hdf5 file or folder (best by the loss in the name). unet: a pytorch-3dunet
    checkpoint with --config YAML. blindspot: a SHINE Lightning .ckpt (--model/--frames where not inferable).
    tagan: N_net_G.pth [--net-s N_net_S.pth] --opt test_opt.txt. cnnt: run__...pt --config run__...json.
    Checkpoints are read without running pickled code; --trust-checkpoint lifts that for files you trust.
    bioimageio: a bioimage.io model package (.zip, rdf.yaml, folder, or a zoo id or URL when online); -o is then
    the .onnx file to write.
    """
    if family == "bioimageio":  # a bioimage.io package (.zip, rdf.yaml or folder) -> one ScopeRT .onnx
        from scopert.export.bioimageio.importer import import_package

        res = import_package(path, out_dir, weights_format=weights_format, trust_package=trust_package)
        click.echo(f"{res.path}: {res.weights} weights; vs the package's test output max abs "
                   f"{res.max_abs_error:.3g}, max rel {res.max_rel_error:.3g}; halo {res.card.halo}", err=True)
        return
    if weights_format or trust_package:
        raise ConfigError("--weights and --trust-package apply to bioimage.io packages (scopert import bioimageio).")
    if not Path(path).exists():
        raise InputError(f"{path} does not exist; check the path.")
    entry = FAMILIES[family]
    if entry.needs_config and not config_path:
        raise ConfigError(f"scopert import {family} needs --config (the weights cannot tell the whole architecture).")
    info = entry.load("importer")(path, out_dir, config=config_path, model_name=model_name, frames=frames,
                                  net_s=net_s, opt_txt=opt_txt, trust=trust)
    click.echo(f"imported {family} into {info.folder}", err=True)


@cli.command()
@click.argument("run_folder", type=click.Path(exists=True))
@click.option("-o", "--output", "out_path", required=True, type=click.Path())
@click.option("--opset", type=int, default=17)
@click.option("--fp16", is_flag=True, help="Also write <out>.fp16.onnx: strongly typed FP16 planned on real tiles.")
@click.option("--calib", multiple=True, type=click.Path(exists=True),
              help="Calibration images (TIFF/NPY/NPZ/HDF5) for the CPU gates and --fp16; default: the run's training "
                   "data. Given alone, the CPU gates are measured on them.")
@click.option("--safety-factor", type=float, default=4.0, show_default=True,
              help="--fp16: keep nodes whose |x| exceeds 65504/F in FP32.")
@click.option("--cpu-gates/--no-cpu-gates", "cpu_gates", default=None,
              help="Measure OpenVINO bf16 vs f32 on real tiles (--calib, else the training data) and record the gate "
                   "in the card: precision auto then runs bf16 where it passed. Default: on whenever real tiles exist.")
@click.option("--int8/--no-int8", "int8", default=None, help="With the CPU gates: also quantize to INT8 with NNCF "
              "(scopert[int8]) on those tiles and record its gate (>= 40 dB, or Dice change <= 0.01 for segmentation). "
              "Default: on where nncf is installed.")
def export(run_folder, out_path, opset, fp16, calib, safety_factor, cpu_gates, int8) -> None:
    """Export a run folder to ONNX, verified against PyTorch, with its card inside."""
    from scopert.commands.preflight import check_export_args

    if int8 and cpu_gates is False:
        raise ConfigError("--int8 is recorded with the CPU gates; drop --no-cpu-gates.")
    check_export_args(run_folder, out_path, opset, fp16 or cpu_gates is not False, calib, safety_factor)  # before torch
    from scopert.export.onnx_export import export_run

    card = export_run(run_folder, out_path, opset=opset)
    err = card.verification.get("onnx_vs_torch", {}).get("max_abs_error")
    click.echo(f"{out_path}: max |ONNX - PyTorch| = {err:.2e}, halo {card.halo}, "
               f"tile-invariant {card.tile_invariant}", err=True)
    if fp16:
        from scopert.export.precision import convert_fp16, describe_half

        res = convert_fp16(out_path, Path(out_path).with_suffix(".fp16.onnx"), list(calib) or None,
                           safety_factor=safety_factor)
        click.echo(f"{res.path}: {len(res.plan.islands)} FP32 islands, predicted PSNR vs FP32 "
                   f"{res.report.psnr_db:.1f} dB, {res.report.nonfinite_fp16} NaN/Inf (ORT CPU); "
                   f"{describe_half(res.report.torch_half)}", err=True)
    if cpu_gates is None:  # issue 24: gated by default whenever real tiles exist (--calib or the training data)
        from scopert.export.precision import has_real_tiles

        cpu_gates = has_real_tiles(card, calib)
        if not cpu_gates:
            click.echo(f"{out_path}: no CPU gates measured (no --calib and the run names no training data); "
                       "precision auto measures bf16 on the first real input instead", err=True)
    if int8 is None:
        import importlib.util

        int8 = cpu_gates and importlib.util.find_spec("nncf") is not None
    if cpu_gates:  # issue 16: bf16 (and INT8) gates on real tiles, recorded in the card
        from scopert.export.int8 import record_cpu_gates

        for name, gate in record_cpu_gates(out_path, list(calib) or None, int8=int8).items():
            click.echo(f"{out_path}: {name} {gate}", err=True)


@cli.command()
@click.option("-o", "--output", "out_dir", default="demo_out", type=click.Path(), show_default=True)
@click.option("--data", type=click.Path(exists=True), help="Real raw/GT pairs (raw/ + gt/ folders, or the W2S folder).")
@click.option("--minutes", type=float, default=2.5, show_default=True, help="Training time budget on the CPU.")
@click.option("--seed", type=int, default=0)
def demo(out_dir, data, minutes, seed) -> None:
    """Data, training, export and tiled inference in one go, with a report (the README's main job)."""
    from scopert.demo import run_demo

    run_demo(out_dir, data, minutes, seed, say=lambda msg: click.echo(msg, err=True))


OPTIONAL_COMMANDS = ("scopert.commands.bench", "scopert.commands.stream", "scopert.commands.build",
                     "scopert.commands.package", "scopert.commands.acquire")


def _add_optional_commands() -> None:
    """Commands that live in their own modules (``scopert/commands/``); each exposes ``command``."""
    import importlib

    for name in OPTIONAL_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        cli.add_command(module.command)


_add_optional_commands()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so it unwinds like Ctrl-C: atomic writers delete their temporaries."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _verbose(argv: list[str]) -> bool:
    """Whether -v/--verbose was given before the command name (the group's option)."""
    for arg in argv:
        if not arg.startswith("-"):
            return False
        if arg == "--verbose" or (arg[1:2] != "-" and "v" in arg[1:]):
            return True
    return False


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _interrupted(exc: BaseException) -> int:
    """The one line and exit status for Ctrl-C (130) or SIGTERM (143); click turns both into Abort."""
    cause = exc if isinstance(exc, KeyboardInterrupt) else (exc.__cause__ or exc.__context__)
    if isinstance(cause, Terminated):
        what, code = "terminated (SIGTERM)", 143
    elif isinstance(cause, KeyboardInterrupt):
        what, code = "interrupted (Ctrl-C)", 130
    else:
        click.echo("aborted", err=True)
        return 130
    click.echo(f"{what}: unfinished outputs were removed, finished ones kept; rerun the same command to "
               "complete the run (`scopert train` resumes after the last finished epoch)", err=True)
    return code


def _exit_now(code: int) -> None:
    """Exit without interpreter finalization, after an interrupt or a full disk. The outputs' temporaries are gone
    by now; finalizing could crash: ONNX Runtime's C++ threads still running a tile abort the process (SIGABRT), and
    the HDF5 library, left with a file whose write failed, crashes (SIGSEGV) when h5py closes its objects."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    """Run the CLI: every failure ends in one line on stderr and an exit status, never a bare traceback.

    Exit 2: bad usage or input (``ScopertError`` subclasses say which); 1: a run that failed (a full disk, a
    backend that raised, a bug: the traceback is printed with -v); 130/143: Ctrl-C/SIGTERM, after the
    atomic writers removed their temporaries.
    """
    import signal

    from scopert.runtime.io.atomic import DiskFullError, disk_full_cause, disk_full_message

    signal.signal(signal.SIGTERM, _raise_terminated)
    verbose = _verbose(sys.argv[1:])
    try:
        cli.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # the writers removed their temporaries while unwinding; finalizing the interpreter now could abort
        # (SIGABRT, "terminate called without an active exception") while an engine thread is mid-run
        _exit_now(_interrupted(exc))
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into one line
        full = disk_full_cause(exc)
        if isinstance(exc, ScopertError) and (full is None or isinstance(exc, DiskFullError)):
            click.echo(f"error: {_one_line(exc, 2000)}", err=True)  # its own message: whole, on one line
            if full is not None:
                _exit_now(exc.exit_code)
            sys.exit(exc.exit_code)
        if verbose:
            import traceback

            traceback.print_exc()
        if full is not None:
            message = f"disk full: {exc}" if isinstance(exc, ScopertError) else disk_full_message(None, full)
            click.echo(f"error: {_one_line(message)}", err=True)
            _exit_now(1)
        else:
            click.echo(f"error: the run failed with {type(exc).__name__}: {_one_line(exc, 300)} (unexpected: "
                       "rerun with `scopert -v ...` for the traceback and report it)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
