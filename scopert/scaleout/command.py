"""``scopert apply --cluster SPEC``: the command-line side of a distributed run (messages and progress bar).

Called by ``scopert.cli.apply`` after the model is loaded and every input was planned by the single-machine
checks (``plan_apply`` / ``plan_folder``). Cheap refusals come before the cluster starts; the input's sha256 and
the normalization are computed after it connected, so an unreachable scheduler fails within seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from scopert.progress import progress_bar


def _dashboard(client: Any) -> None:
    from scopert.scaleout.cluster import dashboard_link

    link = dashboard_link(client)
    workers = len(client.scheduler_info().get("workers", {}))
    click.echo(f"cluster: {workers} workers; dashboard: {link or 'not running (pip install bokeh to get it)'}",
               err=True)


def apply_on_cluster(model: Any, jobs: list[tuple[Path, Path, Path | None]], opts: Any, cluster: str, *,
                     block: tuple[int, ...] | None, resume: bool, backend: str, device: str, folder: bool) -> None:
    """Run the planned ``jobs`` (one volume, or the files of a folder) on the cluster ``cluster`` names."""
    from scopert.scaleout.cluster import open_client, parse_cluster
    from scopert.runtime.apply import plan_apply

    spec = parse_cluster(cluster)
    if folder:
        from scopert.scaleout.files import run_files

        if not jobs:
            click.echo("every output exists; nothing to do", err=True)
            return
        with open_client(spec) as client:
            _dashboard(client)
            with progress_bar(len(jobs), "files", unit="file") as bar:
                stats, seconds = run_files(client, model, jobs, opts, backend=backend, device=device,
                                           progress=bar.update)
        click.echo(f"{stats.done} files on {len(stats.workers)} workers in {seconds:.2f} s", err=True)
        return

    from scopert.scaleout.volume import plan_volume, preflight_volume, run_volume

    (src, dst, gt), = jobs
    with plan_apply(model, src, dst, gt, opts) as job:
        preflight_volume(job, block, resume)
        with open_client(spec) as client:
            _dashboard(client)
            plan = plan_volume(job, block, resume, backend, device)
            job.close()  # the workers read the input themselves
            with progress_bar(plan.grid.n_blocks, dst.name, unit="block") as bar:
                bar.update(plan.computed() if not plan.complete else plan.grid.n_blocks)
                result = run_volume(plan, client, progress=bar.update)
    if result.ran == 0 and result.skipped == result.n_blocks:
        click.echo(f"{dst} is complete ({result.n_blocks} blocks); nothing to do", err=True)
        return
    click.echo(f"{src} -> {dst}  {result.n_blocks} blocks ({result.skipped} done before, {result.ran} run) on "
               f"{len(result.stats.workers)} workers  {result.seconds:.2f} s", err=True)
