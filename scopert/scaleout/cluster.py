"""``--cluster SPEC`` -> a Dask ``Client``: a local cluster, an existing scheduler, or a batch-system cluster.

SPEC is one of
- ``local:N``: a ``LocalCluster`` of N worker processes, the machine's cores split evenly between them;
- ``local-cuda`` or ``local-cuda:0,1``: one worker per GPU. With dask-cuda installed its ``LocalCUDACluster``;
  otherwise one Nanny per device with its own ``CUDA_VISIBLE_DEVICES`` and the resource ``GPU=1`` that every
  task asks for, so two tasks never share a GPU (rapidsai/dask-cuda#778);
- ``tcp://HOST:PORT``: a running scheduler (``dask scheduler``; workers started with ``dask worker``);
- ``FILE.yaml``: a dask-jobqueue cluster (SLURM, PBS or LSF): ``kind``, ``jobs`` (how many to start) and the
  class's own keyword arguments (``cores``, ``memory``, ``queue``, ``walltime``, ``job_extra_directives``...).

Dask, distributed and dask-jobqueue are imported here only, inside the functions. No print: the caller shows
the dashboard link and progress.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from scopert.errors import ConfigError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster", "sge": "SGECluster"}


@dataclass
class ClusterSpec:
    """A parsed ``--cluster`` value."""

    kind: str  # 'local', 'local-cuda', 'address', 'jobqueue'
    workers: int = 0
    address: str = ""
    devices: list[str] = field(default_factory=list)
    jobqueue: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def gpu(self) -> bool:
        """Tasks ask for ``resources={'GPU': 1}`` (one block per GPU at a time)."""
        return self.kind == "local-cuda" or bool(self.jobqueue.get("gpu_resources"))


def parse_cluster(spec: str) -> ClusterSpec:
    """Parse SPEC (see the module doc) or raise a ConfigError that shows the accepted forms."""
    text = spec.strip()
    forms = "local:N, local-cuda[:0,1], tcp://HOST:PORT or a dask-jobqueue YAML file"
    m = re.fullmatch(r"local:(\d+)", text)
    if m:
        n = int(m.group(1))
        if n < 1:
            raise ConfigError(f"--cluster {spec}: give at least one worker (local:1).")
        return ClusterSpec("local", workers=n, source=text)
    m = re.fullmatch(r"local-cuda(?::([\w,]+))?", text)
    if m:
        devices = [d for d in (m.group(1) or "").split(",") if d] or visible_gpus()
        if not devices:
            raise ConfigError("--cluster local-cuda: no GPU is visible (nvidia-smi lists none and "
                              "CUDA_VISIBLE_DEVICES is empty); name the devices, e.g. local-cuda:0,1, or use local:N.")
        return ClusterSpec("local-cuda", workers=len(devices), devices=devices, source=text)
    if re.fullmatch(r"(tcp|tls|ucx|inproc)://\S+", text):
        return ClusterSpec("address", address=text, source=text)
    if text.endswith((".yaml", ".yml")):
        return ClusterSpec("jobqueue", jobqueue=read_jobqueue_yaml(Path(text)), source=text)
    raise ConfigError(f"--cluster {spec!r} is not a cluster spec; use {forms}.")


def visible_gpus() -> list[str]:
    """The GPUs this machine offers: CUDA_VISIBLE_DEVICES if set, else those nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def read_jobqueue_yaml(path: Path) -> dict[str, Any]:
    """Read a dask-jobqueue YAML: ``kind`` (slurm, pbs, lsf, sge), ``jobs`` and the class's keyword arguments."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"--cluster {path} does not exist; give a dask-jobqueue YAML file (see the README).")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--cluster {path} is not valid YAML ({str(e).splitlines()[0]}); fix the file.") from e
    if not isinstance(data, dict) or str(data.get("kind", "")).lower() not in JOBQUEUE_KINDS:
        raise ConfigError(f"--cluster {path} needs 'kind: slurm' (or pbs, lsf, sge) at the top level; add it.")
    return data


def gpu_worker_specs(devices: list[str], threads: int = 1) -> dict[str, dict[str, Any]]:
    """One Nanny per GPU: its own CUDA_VISIBLE_DEVICES and the resource GPU=1 (``SpecCluster`` worker specs)."""
    from distributed import Nanny

    return {f"gpu-{d}": {"cls": Nanny, "options": {"nthreads": threads, "env": {"CUDA_VISIBLE_DEVICES": str(d)},
                                                     "resources": {"GPU": 1}, "name": f"gpu-{d}"}}
            for d in devices}


def build_jobqueue_cluster(options: dict[str, Any]):
    """The dask-jobqueue cluster object of a YAML spec, with ``jobs`` jobs asked for (none started before)."""
    try:
        import dask_jobqueue
    except ImportError as e:
        raise ConfigError("a YAML --cluster needs dask-jobqueue; pip install dask-jobqueue "
                          "(or 'scopert[dist]').") from e
    options = dict(options)
    kind = str(options.pop("kind")).lower()
    jobs = int(options.pop("jobs", 1))
    if options.pop("gpu_resources", False):  # tasks ask for GPU=1: each worker offers one GPU
        extra = list(options.get("worker_extra_args", []))
        options["worker_extra_args"] = extra + ["--resources", "GPU=1"]
    options.setdefault("scheduler_options", {}).setdefault("dashboard_address", ":0")
    try:
        cluster = getattr(dask_jobqueue, JOBQUEUE_KINDS[kind])(**options)
    except (TypeError, ValueError) as e:  # an unknown key or a bad value in the YAML
        raise ConfigError(f"the {kind} cluster does not take these options ({str(e).splitlines()[0]}); fix the "
                          "YAML (see the dask-jobqueue docs for its keyword arguments).") from None
    return cluster, jobs


# Worker processes inherit the config they start with. The statistical profiler samples every thread's stack
# every 10 ms: measurable CPU on small machines, and our blocks time themselves.
WORKER_CONFIG = {"distributed.worker.profile.enabled": False}


def make_cluster(spec: ClusterSpec):
    """The cluster object for a local or batch-system spec (None for an existing scheduler's address)."""
    import dask

    with dask.config.set(WORKER_CONFIG):
        return _make_cluster(spec)


def _make_cluster(spec: ClusterSpec):
    from distributed import LocalCluster

    if spec.kind == "local":
        threads = max(1, (os.cpu_count() or 1) // spec.workers)
        return LocalCluster(n_workers=spec.workers, threads_per_worker=threads, processes=True,
                            dashboard_address=":0"), None
    if spec.kind == "local-cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            from distributed import Scheduler, SpecCluster

            return SpecCluster(workers=gpu_worker_specs(spec.devices),
                               scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}}), None
        return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(spec.devices), dashboard_address=":0"), None
    if spec.kind == "jobqueue":
        return build_jobqueue_cluster(spec.jobqueue)
    return None, None


def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse a ``tcp://`` address that is not a Dask scheduler, within ``timeout`` seconds, before Dask talks to it.

    A Dask scheduler greets every new connection with its handshake (8-byte message length, frame count and
    lengths, then msgpack naming 'compression'). An HTTP server sends nothing and Dask would wait for ever (610 s
    until Ctrl-C was measured); a proxy that answers 'HTTP/1.1 400' had its bytes read as a message length and Dask
    tried to allocate 3 EiB. Here the first bytes are read with a deadline and named when they are not Dask's."""
    import socket
    import struct

    match = re.fullmatch(r"tcp://\[?([^\]]+?)\]?:(\d+)", address)
    if not match:
        return  # tls/ucx/inproc: Dask's own connect (and its timeout) decides
    host, port = match.group(1), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            try:
                first = sock.recv(64)
            except socket.timeout:
                raise ConfigError(f"{address} accepts connections but sent no Dask handshake within {timeout:g} s "
                                  "(an HTTP or other server listens there); give the Dask scheduler's address "
                                  "(dask scheduler prints it: tcp://HOST:8786)") from None
    except OSError as e:
        raise ConfigError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({type(e).__name__}: "
                          f"{e.strerror or e}); start it (dask scheduler) or check the address and firewall") from None
    plausible = len(first) >= 16 and 0 < struct.unpack("<Q", first[:8])[0] < 2**20 and \
        0 < struct.unpack("<Q", first[8:16])[0] < 64
    if not plausible and b"compression" not in first:
        shown = first[:40].decode("latin-1").splitlines()[0] if first else "(it closed the connection)"
        raise ConfigError(f"{address} is not a Dask scheduler: it answered {shown!r}; give the Dask scheduler's "
                          "address (dask scheduler prints it: tcp://HOST:8786)")


@contextmanager
def open_client(spec: ClusterSpec) -> Iterator[Any]:
    """A connected Client for ``spec``; the cluster it started (if any) is closed on exit.

    An unreachable scheduler is a ConfigError after ``CONNECT_TIMEOUT_S`` seconds, before anything is written."""
    import logging as _logging

    from distributed import Client

    if not log.isEnabledFor(_logging.DEBUG):  # Dask's own INFO lines drown the run's; -v shows them
        _logging.getLogger("distributed").setLevel(_logging.WARNING)
    cluster, jobs = make_cluster(spec)
    try:
        if cluster is None:
            check_scheduler(spec.address)
            try:
                client = Client(spec.address, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as e:
                raise ConfigError(f"cannot reach the Dask scheduler at {spec.address} within {CONNECT_TIMEOUT_S} s "
                                  f"({type(e).__name__}); start it (dask scheduler) or check the address and "
                                  "firewall") from None
        else:
            if jobs:
                cluster.scale(jobs=jobs)
            client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def dashboard_link(client) -> str | None:
    """The dashboard's address, or None where it does not run (bokeh is not installed)."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return None
    try:
        return client.dashboard_link or None
    except Exception:  # noqa: BLE001 - a scheduler without a dashboard
        return None


def total_threads(client) -> int:
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001
        return 1
