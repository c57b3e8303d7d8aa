"""Faults and bad input on a real cluster: a worker killed mid-block, a client SIGKILLed mid-run then resumed,
a worker without the backend or the input, an unreachable scheduler, refused options and outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from scopert.scaleout.ledger import Ledger
from scopert.scaleout.volume import incomplete_path
from scopert.errors import ConfigError, OutputError, RunError
from tests.scaleout.faults import ExitOnce
from tests.scaleout.helpers import distributed_run, read_zarr, single

REPO = Path(__file__).resolve().parents[2]


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "scopert", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, **kw)


def test_a_worker_killed_mid_block_still_gives_the_single_machine_output(dist_models, em_volume, client, tmp_path):
    marker = tmp_path / "killed-once"
    expect = single(dist_models / "m3d.onnx", em_volume, tmp_path / "single.zarr", tile=(8, 24, 24))
    result = distributed_run(dist_models / "m3d.onnx", em_volume, tmp_path / "dist.zarr", client, (4, 48, 56),
                             task=ExitOnce(str(marker), "1-0-1"), tile=(8, 24, 24))
    assert marker.exists(), "the fault was injected: a worker process died in block 1-0-1"
    assert result.ran == result.n_blocks == 12
    assert np.abs(read_zarr(tmp_path / "dist.zarr") - expect).max() <= 1e-6
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it, for the tests after this one


def test_client_killed_then_resume_gives_the_same_output(dist_models, em_volume, tmp_path):
    """The CLI end to end: `--cluster local:2`, SIGKILL while blocks run, then `--resume` skips what finished."""
    out = tmp_path / "dist.zarr"
    expect = single(dist_models / "m2d.onnx", em_volume, tmp_path / "single.zarr", tile=(32, 32))
    args = ("apply", "-m", dist_models / "m2d.onnx", "-i", em_volume, "-o", out, "-B", "32,32", "--backend", "ort",
            "--cluster", "local:2", "--block", "1,28,28")
    proc = cli(*args)
    done_dir = Ledger.of(incomplete_path(out)).done_dir
    deadline = time.time() + 120
    family = []
    while time.time() < deadline and proc.poll() is None:
        n = len(list(done_dir.glob("*.json"))) if done_dir.is_dir() else 0
        if n >= 4:
            family = psutil.Process(proc.pid).children(recursive=True)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    for p in family:  # the cluster's worker processes the dead client left behind (started by this test)
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {proc.stderr.read()}"
    assert not out.exists(), "an unfinished run never holds the final name"
    finished = len(Ledger.of(incomplete_path(out)).done())
    assert 4 <= finished < 12 * 4 * 5
    # without --resume the leftover is refused, with it the run goes on from the ledger
    refused = cli(*args)
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2 and "--resume" in err and "Traceback" not in err, err
    resumed = cli(*args, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"({finished} done before" in err and "dashboard:" in err, err
    assert np.abs(read_zarr(out) - expect).max() <= 1e-6
    assert not incomplete_path(out).exists()


def test_resume_refuses_a_changed_option_or_input(dist_models, em_volume, client, tmp_path):
    out = tmp_path / "dist.zarr"
    distributed_run(dist_models / "m2d.onnx", em_volume, out, client, (6, 48, 56), tile=(32, 32))
    with pytest.raises(OutputError, match="exists; pass --resume"):
        distributed_run(dist_models / "m2d.onnx", em_volume, out, client, (6, 48, 56), tile=(32, 32))
    again = distributed_run(dist_models / "m2d.onnx", em_volume, out, client, (6, 48, 56), resume=True, tile=(32, 32))
    assert again.ran == 0 and again.skipped == again.n_blocks
    with pytest.raises(OutputError, match=r"the options \(bits\) changed"):
        distributed_run(dist_models / "m2d.onnx", em_volume, out, client, (6, 48, 56), resume=True, tile=(32, 32),
                        bits=16)
    changed = tmp_path / "em.tif"
    changed.write_bytes(em_volume.read_bytes()[:-1] + b"\x07")
    with pytest.raises(OutputError, match="the input changed"):
        distributed_run(dist_models / "m2d.onnx", changed, out, client, (6, 48, 56), resume=True, tile=(32, 32))


def test_a_worker_without_the_input_names_worker_and_path(dist_models, em_volume, client, tmp_path):
    """The client plans with the input in place; on the workers it is gone (an unmounted share)."""
    from scopert.scaleout.volume import plan_volume, run_volume
    from scopert.runtime import load
    from scopert.runtime.apply import ApplyOptions, plan_apply

    moved = tmp_path / "em.tif"
    moved.write_bytes(em_volume.read_bytes())
    with plan_apply(load(dist_models / "m2d.onnx", backend="ort"), moved, tmp_path / "o.zarr", None,
                    ApplyOptions(tile=(32, 32))) as job:
        plan = plan_volume(job, (6, 48, 56), False, backend="ort")
    moved.unlink()
    with pytest.raises(RunError) as err:
        run_volume(plan, client)
    msg = str(err.value)
    assert "failed on worker" in msg and "tcp://" in msg and "em.tif" in msg and "does not exist" in msg, msg
    assert "--resume" in msg and not (tmp_path / "o.zarr").exists()


def test_a_worker_without_the_backend_names_worker_and_cause(dist_models, em_volume, tmp_path):
    """A worker started (`dask worker`) where onnxruntime cannot be imported: the first block names it."""
    import distributed

    from scopert.scaleout.volume import plan_volume, run_volume
    from scopert.runtime import load
    from scopert.runtime.apply import ApplyOptions, plan_apply

    fake = tmp_path / "no_ort" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('onnxruntime is not installed on this node')\n")
    env = dict(os.environ, PYTHONPATH=f"{fake.parent}{os.pathsep}{REPO}")
    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
                                   "--nthreads", "1", "--name", "node-without-ort", "--no-dashboard"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(1, timeout=60)
            with plan_apply(load(dist_models / "m2d.onnx", backend="ort"), em_volume, tmp_path / "o.zarr", None,
                            ApplyOptions(tile=(32, 32))) as job:
                plan = plan_volume(job, (6, 48, 56), False, backend="ort")
            with pytest.raises(RunError) as err:
                run_volume(plan, client)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    msg = str(err.value)
    assert "node-without-ort" in msg and "ONNX Runtime is not installed" in msg, msg
    assert incomplete_path(tmp_path / "o.zarr").exists(), "the store and its ledger stay for --resume"


def test_unreachable_scheduler_fails_fast_and_writes_nothing(dist_models, em_volume, tmp_path):
    from scopert.scaleout.cluster import open_client, parse_cluster

    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler"):
        with open_client(parse_cluster("tcp://127.0.0.1:9")):
            pass
    assert time.perf_counter() - t0 < 10
    out = tmp_path / "o.zarr"
    proc = cli("apply", "-m", dist_models / "m2d.onnx", "-i", em_volume, "-o", out, "--cluster", "tcp://127.0.0.1:9")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err, err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".o.zarr*")), "nothing was written"


def test_refused_before_any_cluster_starts(dist_models, em_volume, w2s_image, tmp_path):
    from scopert.scaleout.volume import preflight_volume
    from scopert.runtime import load
    from scopert.runtime.apply import ApplyOptions, plan_apply

    def preflight(model, image, out, block=None, **opts):
        with plan_apply(load(dist_models / model, backend="ort"), image, tmp_path / out, None,
                        ApplyOptions(**opts)) as job:
            return preflight_volume(job, block, False)

    with pytest.raises(ConfigError, match="more tiles would run than on one machine"):
        preflight("m3d.onnx", em_volume, "o.zarr", (4, 3, 48))
    with pytest.raises(ConfigError, match="more tiles would run than on one machine"):
        preflight("m3d.onnx", em_volume, "o.zarr", (4, 9, 48), tile=(8, 24, 24))
    # blend stitching and tile-variant models are planned on the global tiles, not refused (issue 24)
    assert preflight("m2d.onnx", w2s_image, "o.zarr", stitch="blend").n_blocks >= 1
    assert preflight("m3d_variant.onnx", em_volume, "o.zarr", stitch="crop").n_blocks >= 1
    with pytest.raises(ConfigError, match="must end in .zarr"):
        preflight("m2d.onnx", w2s_image, "o.tif")
    (tmp_path / "old.zarr").mkdir()
    with pytest.raises(OutputError, match="exists; pass --resume"):
        preflight("m2d.onnx", w2s_image, "old.zarr")


def _server(answer: bytes | None):
    """A loopback TCP server that greets each connection with ``answer`` (None: says nothing, as HTTP servers do);
    it stops itself after 30 s."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(30)

    def serve():
        try:
            while True:
                conn, _ = srv.accept()
                if answer is not None:
                    conn.sendall(answer)
                threading.Timer(10, conn.close).start()
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    return srv


@pytest.mark.parametrize("answer, words", [(None, "sent no Dask handshake within 5 s"),
                                           (b"HTTP/1.1 400 Bad Request\r\n\r\n", "answered 'HTTP/1.1 400 Bad Request'")])
def test_an_address_that_is_not_a_dask_scheduler_ends_in_seconds_with_what_answered(answer, words, dist_models,
                                                                                    em_volume, tmp_path):
    """Issue 24: an HTTP server hung the run for 610 s; a proxy's 'HTTP/1.1 400' became a 3 EiB allocation."""
    srv = _server(answer)
    address = f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    try:
        t0 = time.perf_counter()
        out = tmp_path / "o.zarr"
        proc = cli("apply", "-m", dist_models / "m2d.onnx", "-i", em_volume, "-o", out, "--cluster", address)
        _, err = proc.communicate(timeout=120)
        elapsed = time.perf_counter() - t0
    finally:
        srv.close()
    assert proc.returncode == 2 and f"{address}" in err and words in err, err
    assert "Traceback" not in err and "MemoryError" not in err
    assert elapsed < 60, elapsed  # the model loads first; the address is judged within 5 s
    assert not out.exists()


def test_a_real_scheduler_passes_the_handshake_check(client):
    from scopert.scaleout.cluster import check_scheduler

    address = client.scheduler.address
    assert address.startswith("tcp://")
    check_scheduler(address)  # no error: the scheduler greets with Dask's handshake
