"""--cluster specs: parsing, GPU assignment on a fake device list, dask-jobqueue objects, folder mode, and
that Dask is imported only when --cluster is given."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from scopert.scaleout.cluster import build_jobqueue_cluster, make_cluster, parse_cluster, read_jobqueue_yaml
from scopert.errors import ConfigError


def test_parse_specs(tmp_path, monkeypatch):
    assert parse_cluster("local:3").workers == 3
    assert parse_cluster("tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
    spec = parse_cluster("local-cuda:2,3")
    assert spec.devices == ["2", "3"] and spec.gpu
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,5")
    assert parse_cluster("local-cuda").devices == ["0", "1", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="no GPU is visible"):
        parse_cluster("local-cuda")
    for bad in ("local:0", "lokal:2", "8786"):
        with pytest.raises(ConfigError):
            parse_cluster(bad)
    (tmp_path / "bad.yaml").write_text("cores: 4\n")
    with pytest.raises(ConfigError, match="kind: slurm"):
        parse_cluster(str(tmp_path / "bad.yaml"))


def test_local_cuda_without_dask_cuda_gives_each_worker_its_own_gpu():
    """Two fake devices: two workers, each with its own CUDA_VISIBLE_DEVICES and the resource GPU=1."""
    import distributed

    with pytest.raises(ImportError):
        import dask_cuda  # noqa: F401
    from scopert.scaleout.dispatch import gpu_resources

    cluster, _ = make_cluster(parse_cluster("local-cuda:3,7"))
    with cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        seen = client.run(lambda: __import__("os").environ["CUDA_VISIBLE_DEVICES"])
        assert sorted(seen.values()) == ["3", "7"]
        resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
        assert resources == [{"GPU": 1}, {"GPU": 1}]
        assert gpu_resources(client) == {"GPU": 1}
        # tasks that ask for a GPU run on the worker that owns one, one at a time per device
        devices = client.gather(client.map(lambda i: __import__("os").environ["CUDA_VISIBLE_DEVICES"], range(6),
                                           resources={"GPU": 1}))
        assert set(devices) == {"3", "7"}


SLURM = """\
kind: slurm
jobs: 2
cores: 8
processes: 1
memory: 64GB
queue: gpu
walltime: "04:00:00"
job_extra_directives: ["--gres=gpu:1"]
gpu_resources: true
"""


def test_jobqueue_yaml_builds_a_slurm_cluster_object(tmp_path):
    path = tmp_path / "slurm.yaml"
    path.write_text(SLURM)
    spec = parse_cluster(str(path))
    assert spec.kind == "jobqueue" and spec.gpu
    cluster, jobs = build_jobqueue_cluster(read_jobqueue_yaml(path))
    try:
        script = cluster.job_script()
        assert jobs == 2
        for line in ("#SBATCH -p gpu", "#SBATCH --gres=gpu:1", "#SBATCH -t 04:00:00", "--resources GPU=1"):
            assert line in script, (line, script)
    finally:
        cluster.close()
    path.write_text(SLURM.replace("cores: 8", "cores: 8\nno_such_option: 1"))
    with pytest.raises(ConfigError, match="does not take these options"):
        build_jobqueue_cluster(read_jobqueue_yaml(path))


def test_folder_mode_one_task_per_file_same_outputs(dist_models, client, tmp_path, data_dir):
    from scopert.scaleout.files import run_files
    from scopert.runtime import load
    from scopert.runtime.apply import ApplyOptions, apply_file

    src = tmp_path / "in"
    src.mkdir()
    stack = tifffile.imread(data_dir / "isbi2012_em" / "isbi2012_train_volume.tif")
    for i in range(3):
        tifffile.imwrite(src / f"em{i}.tif", stack[i, :96, :80])
    model = load(dist_models / "m2d.onnx", backend="ort")
    opts = ApplyOptions(tile=(32, 32), bits=16)
    jobs = [(p, tmp_path / "out" / p.name, None) for p in sorted(src.iterdir())]
    (tmp_path / "out").mkdir()
    stats, _ = run_files(client, model, jobs, opts, backend="ort")
    assert stats.done == 3
    for p in sorted(src.iterdir()):
        apply_file(model, p, tmp_path / "single.tif", opts=opts)
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / p.name), tifffile.imread(tmp_path / "single.tif"))
    assert not list((tmp_path / "out").glob(".*")), "no temporaries left"


def test_dask_is_imported_only_with_cluster():
    code = ("import sys, scopert.cli, scopert.scaleout, scopert.runtime.apply; "
            "print(any(m == 'dask' or m.startswith(('dask.', 'distributed')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
