"""One big volume on a Dask cluster: blocks with halos, each restored by a worker into one OME-Zarr, resumable.

The client plans (``plan_volume``): it refuses what cannot be exact or safe, plans the blocks, fits the
normalization once on the whole (lazily read) volume as a single-machine run does, and computes the ledger's
identity (sha256 of model, input and options). ``run_volume`` then creates the output store at a hidden name
(``.OUT.zarr.incomplete``) with its NGFF metadata, submits the blocks that the ledger does not list as done,
and renames the store to ``OUT.zarr`` when every block is done: as with every ScopeRT output, the final name
holds a complete image or nothing. A killed client leaves the hidden store and its ledger; ``--resume`` goes on.

The tiles are planned once on the client over the whole volume, exactly as a single-machine run plans them,
and every block runs global tiles (``blocks.py``), so crop and blend stitching and tile-variant models (instance
or group norm over the tile) give the single-machine result whatever the block layout. Blend runs in two passes:
each tile once, by its owner, which writes its interior and keeps weighted sums of the rest of its reach; then
``run_rim`` adds the neighbours' sums over each rim. We chose this over blocks that also run their neighbours'
tiles, which repeat one tile per boundary per axis (30-90% more tiles at memory-bounded 3D block sizes).
Frame-window models (a window of frames in, the centre frame out) split along t only: each frame's
normalization and remap use the whole frame.
Imports numpy, scopert and (inside functions) distributed; never torch or onnx.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from scopert.checksum import sha256_file
from scopert.scaleout.blocks import BlockGrid, plan_blocks
from scopert.runtime.tiling import AxisPlan, AxisTile, TilePlan, plan_axis
from scopert.scaleout.dispatch import DispatchStats, dispatch, gpu_resources
from scopert.scaleout.ledger import Ledger, input_fingerprint, options_digest
from scopert.scaleout.tasks import SUMS_DIR, SUMS_MARK, ModelRef, VolumeJob, WorkerCache, run_block, run_rim
from scopert.errors import ConfigError, OutputError
from scopert.runtime.layout import centre_frame_model, split_loop_axes
from scopert.runtime.normalize import fit_normalization

log = logging.getLogger(__name__)

INCOMPLETE = ".incomplete"
EFFICIENT_BLOCK_VOXELS = 1 << 20  # per-block cost under ~5% of a light model's block compute (dask_block_curve.md)


def incomplete_path(output: Path) -> Path:
    """Where a distributed run builds ``output`` until every block is done (hidden, same folder)."""
    return output.parent / f".{output.name}{INCOMPLETE}"


@dataclass
class VolumePlan:
    """What the client decided before connecting to the cluster."""

    job: VolumeJob
    grid: BlockGrid
    output: Path
    manifest: dict[str, Any]
    done: set[str]
    fresh: bool  # no store yet: create it
    complete: bool  # OUT.zarr exists and is complete: nothing to do
    out_spec: Any  # scopert.runtime.io.outputs.OutputSpec
    chunks: tuple[int, ...]

    def computed(self) -> int:
        """Blocks whose tiles have run (what a progress bar counts; blend rims follow in seconds)."""
        return len({name.removeprefix(SUMS_MARK) for name in self.done})


@dataclass
class VolumeResult:
    output: Path
    n_blocks: int
    skipped: int
    ran: int
    seconds: float
    stats: DispatchStats = field(default_factory=DispatchStats)


def check_distributable(apply_job: Any) -> None:
    """Refuse what cannot be split into blocks exactly (the reasons are in the module doc)."""
    opts = apply_job.opts
    if apply_job.out.kind != "zarr":
        raise ConfigError(f"--cluster writes one volume as OME-Zarr, so -o must end in .zarr (got "
                          f"{apply_job.output_path.name}); e.g. -o {apply_job.output_path.with_suffix('.zarr').name}.")
    if apply_job.gt_path is not None or opts.rescale or opts.normalize_output or (
            apply_job.split_axis is not None and opts.channel is None):
        raise ConfigError("-g, --rescale, --normalize_output_range_between_zero_and_one and --per-channel need the "
                          "whole output at once; drop them with --cluster, or run without --cluster.")


def preflight_volume(apply_job: Any, block: tuple[int, ...] | None, resume: bool) -> BlockGrid:
    """The checks that read no pixel and hash nothing (run before connecting to a cluster): refusals, blocks,
    and an existing output without ``--resume``."""
    check_distributable(apply_job)
    grid = _grid(apply_job, block)
    output = Path(apply_job.output_path).absolute()
    if not resume and output.exists():
        raise OutputError(f"{output} exists; pass --resume to finish or check it, or remove it (or choose "
                          "another -o) to start again")
    if not resume and incomplete_path(output).exists():
        raise OutputError(f"an interrupted --cluster run left {incomplete_path(output)}; pass --resume to go on "
                          "from its finished blocks, or remove it to start again")
    return grid


def _grid(apply_job: Any, block: tuple[int, ...] | None) -> BlockGrid:
    """Blocks over the volume's global tile plan (for a frame-window model: frames, each restored whole)."""
    model, opts = apply_job.model, apply_job.opts
    shape = dict(zip(apply_job.data_axes, apply_job.image.shape))
    if centre_frame_model(model.card):
        return _frame_blocks(model, shape, block)
    loop, _ = split_loop_axes(apply_job.data_axes, model.card)
    tiled = model.in_layout.with_loop(loop).all_tiled
    rp = model.make_plan({a: shape[a] for a in tiled}, opts.tile, opts.overlap, opts.stitch, opts.batch,
                         opts.window, loop)
    grid = plan_blocks(rp.plan, block, replace(rp, plan=None))
    extra = grid.redundant_fraction()
    log.info("%d blocks of %s over %d tiles of %s (%s stitching); %.1f%% of the tiles run in two blocks",
             grid.n_blocks, "x".join(map(str, grid.block)), rp.plan.n_tiles, "x".join(map(str, rp.plan.tile_shape)),
             rp.stitch, 100 * extra)
    warn_small_blocks(grid, block)
    return grid


def warn_small_blocks(grid: BlockGrid, given: tuple[int, ...] | None) -> None:
    """Say once when a --block is so small that the per-block cost shows: each block costs about 25-35 ms on top
    of its tiles (task dispatch, the worker cache lookup, reading its slab, the OME-Zarr region write and fsync, the
    ledger mark; blend adds its partial sums and the rim pass), measured in benchmarks/results/dask_block_curve.md:
    15-90% of a light model's compute in blocks under ~0.3 M voxels, under 5% from ~1 M."""
    voxels = math.prod(grid.block)
    if given and grid.n_blocks > 1 and voxels < EFFICIENT_BLOCK_VOXELS:
        log.warning("--block %s holds %.2f M voxels: each of its %d blocks costs ~30 ms beyond its tiles (dispatch, "
                    "region write and fsync, ledger), which a light model's compute in a block this small does not "
                    "hide; blocks of at least %.0f M voxels (or no --block: whole tiles near 64x512x512) keep it "
                    "under ~5%%", ",".join(map(str, given)), voxels / 1e6, grid.n_blocks,
                    EFFICIENT_BLOCK_VOXELS / 1e6)


def _frame_blocks(model: Any, shape: dict[str, int], block: tuple[int, ...] | None) -> BlockGrid:
    """A window-of-frames model: blocks of whole frames along t (the frame windows are read around them)."""
    axes = "t" + model.in_layout.tiled
    frames = plan_axis("t", shape["t"], 1, 0, 1, 1.0, "crop")  # one frame per tile
    scale = model.card.output.scale
    whole = tuple(AxisPlan(a, shape[a], shape[a], 0, float(scale.get(a, 1.0)),
                           (AxisTile(0, shape[a], 0, shape[a], True, True),)) for a in model.in_layout.tiled)
    given = tuple(block or ())
    if len(given) > 1 and any(b < shape[a] for a, b in zip(axes[len(axes) - len(given):], given) if a != "t"):
        raise ConfigError(f"--block {','.join(map(str, given))}: this model restores whole frames (its per-frame "
                          f"normalization and remap use the whole frame), so blocks split t only; give --block N "
                          f"(frames per block).")
    return plan_blocks(TilePlan(axes, "crop", (frames,) + whole), given[:1] + tuple(shape[a] for a in axes[1:])
                       if given else None)


def plan_volume(apply_job: Any, block: tuple[int, ...] | None, resume: bool, backend: str = "auto",
                device: str = "auto") -> VolumePlan:
    """Check, plan blocks, fit the normalization, and read the ledger of an earlier run (``--resume``)."""
    grid = preflight_volume(apply_job, block, resume)
    model, opts, card = apply_job.model, apply_job.opts, apply_job.model.card
    tiled = grid.axes
    out = apply_job.out
    tiled_chunks = dict(zip(tiled, grid.output_chunks()))
    chunks = tuple(tiled_chunks.get(a, 1) for a in out.axes)

    output = Path(apply_job.output_path).absolute()
    partial = incomplete_path(output)
    norm = None if centre_frame_model(card) else fit_normalization(apply_job.image.array, card.normalization,
                                                                     opts.p_min, opts.p_max)
    options = {k: v for k, v in asdict(opts).items() if k not in ("batch", "in_memory_bytes")}
    options.update(block=list(grid.block), data_axes=apply_job.data_axes, out_axes=out.axes,
                   out_shape=list(out.shape), normalization=asdict(norm) if norm else "per frame")
    manifest = {"version": 1, "model": str(model.path), "model_sha256": sha256_file(model.path),
                "input": str(apply_job.input_path), "input_sha256": input_fingerprint(apply_job.input_path),
                "options": options, "options_sha256": options_digest(options), "n_blocks": grid.n_blocks,
                "grid": list(grid.grid)}
    complete = fresh = False
    done: set[str] = set()
    if output.exists():
        ledger = Ledger.of(output)
        if not ledger.exists():
            raise OutputError(f"--resume: {output} was not written by a --cluster run (it has no ledger); remove it "
                              "or choose another -o")
        ledger.check_same(manifest, output)
        complete = True
    elif partial.exists():
        ledger = Ledger.of(partial)
        if not ledger.exists():
            raise OutputError(f"--resume: {partial} has no ledger, so its finished blocks are unknown; remove it and "
                              "run again without --resume")
        ledger.check_same(manifest, output)
        done = ledger.done()
    else:
        fresh = True
        if resume:
            log.info("--resume: no earlier run of %s; starting from the first block", output.name)
    job = VolumeJob(
        model=ModelRef(str(Path(model.path).absolute()), manifest["model_sha256"], backend, device),
        input_path=str(Path(apply_job.input_path).absolute()), input_sha256=manifest["input_sha256"],
        dataset=opts.dataset,
        data_axes=apply_job.data_axes, tiled_axes=tiled, scales=grid.scale, opts=opts, norm=norm,
        store=str(partial), level0=str(partial / "0"), out_axes=out.axes, sink_axes=apply_job.sink_axes,
        run=grid.run)
    return VolumePlan(job, grid, output, manifest, done, fresh, complete, out, chunks)


def _create_store(plan: VolumePlan) -> None:
    from scopert.runtime.io.omezarr import create_ome_zarr

    out = plan.out_spec
    partial = Path(plan.job.store)
    try:
        create_ome_zarr(partial, out.shape, out.dtype, out.axes, chunks=plan.chunks, name=plan.output.stem,
                        scale=out.scale, attrs=out.attrs or None, physical=out.physical,
                        channel_names=out.channel_names, ngff=out.ngff)
        Ledger.of(partial).create(plan.manifest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _finish(plan: VolumePlan) -> None:
    """Rename the store to its final name once the ledger lists every block."""
    partial = Path(plan.job.store)
    done = {name for name in Ledger.of(partial).done() if not name.startswith(SUMS_MARK)}
    missing = plan.grid.n_blocks - len(done)
    if missing:
        raise OutputError(f"{missing} of {plan.grid.n_blocks} blocks have no ledger marker; rerun with --resume")
    shutil.rmtree(partial / SUMS_DIR, ignore_errors=True)
    from scopert.runtime.io.omezarr import fill_pyramid

    t0 = time.perf_counter()
    levels = fill_pyramid(partial)  # on the client, a plane and 2048x2048 pixels at a time
    if levels:
        log.info("pyramid: %d coarser levels of %s in %.1f s", levels, plan.output.name, time.perf_counter() - t0)
    os.replace(partial, plan.output)
    fd = os.open(plan.output.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_volume(plan: VolumePlan, client: Any, *, progress: Callable[[int], None] | None = None,
               task: Callable[..., dict[str, Any]] = run_block, window: int | None = None) -> VolumeResult:
    """Run a planned volume on ``client``'s cluster; ``task`` is the block function (tests wrap it)."""
    from scopert.scaleout.cluster import total_threads

    t0 = time.perf_counter()
    if plan.complete:
        log.info("%s is complete (%d blocks); nothing to do", plan.output, plan.grid.n_blocks)
        return VolumeResult(plan.output, plan.grid.n_blocks, plan.grid.n_blocks, 0, 0.0)
    if plan.fresh:
        _create_store(plan)
    client.register_plugin(WorkerCache())  # idempotent: a warm cache survives from run to run
    done = plan.done
    skipped = len([n for n in done if not n.startswith(SUMS_MARK)])
    if skipped:
        log.info("resuming: %d of %d blocks are done; running the other %d", skipped, plan.grid.n_blocks,
                 plan.grid.n_blocks - skipped)
    blend = plan.grid.plan.mode == "blend"
    window = window or max(16, 4 * total_threads(client))
    hint = (f"; the finished blocks are in the ledger of {plan.job.store}: fix the cause and rerun with --resume")
    first = (b for b in plan.grid if b.name not in done and f"{SUMS_MARK}{b.name}" not in done)
    stats = dispatch(client, task, first, (plan.job,), window=window, what=lambda b: f"block {b.name}",
                     resources=gpu_resources(client),
                     on_done=(lambda info: progress(1)) if progress else None, failed_hint=hint)
    if blend:  # every block's sums are on disk: finish the rims (no model, no GPU: reads, adds, writes)
        t1 = time.perf_counter()
        rims = dispatch(client, run_rim, (b for b in plan.grid if b.name not in done), (plan.job,), window=window,
                        what=lambda b: f"block {b.name} (rim)", failed_hint=hint)
        stats.done = rims.done
        log.info("blend: rims of %d blocks finished in %.2f s", rims.done, time.perf_counter() - t1)
    _finish(plan)
    return VolumeResult(plan.output, plan.grid.n_blocks, skipped, stats.done, time.perf_counter() - t0, stats)
