"""Every bad argument of stream, bench, build, export and train is refused before any compute: exit 2, a message
that names the argument, within 2 s, and nothing written. Export and train refuse before torch is imported."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from scopert.commands.preflight import model_card
from scopert.runtime.onnx_file import onnx_metadata
from scopert.cli import main
from tests.runtime.graphs import conv_stack

SECONDS = 2.0


@pytest.fixture(scope="module")
def files(tmp_path_factory, data_dir):
    """Inputs in their own folder: the tests check that nothing appears in theirs."""
    d = tmp_path_factory.mktemp("inputs")
    conv_stack(d / "m2d.onnx", ndim=2, layers=2, channels=4)  # halo 2
    conv_stack(d / "m2d_div4.onnx", ndim=2, layers=2, channels=4, divisor=4)
    conv_stack(d / "m3d.onnx", ndim=3, layers=2, channels=4)
    conv_stack(d / "m2d_2ch.onnx", ndim=2, layers=2, channels=4, cin=2)
    movie = tifffile.imread(data_dir / "trackpy_bulk_water" / "bulk_water_first40.tif")[:6, :64, :64]
    tifffile.imwrite(d / "movie.tif", movie, imagej=True, metadata={"axes": "TYX"})
    tifffile.imwrite(d / "volume.tif", movie, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(d / "frame.tif", movie[0])
    (d / "run" / "checkpoints").mkdir(parents=True)
    (d / "run" / "run.json").write_text(json.dumps({"family": "rcan", "model": {"ndim": 2}}))
    (d / "run" / "checkpoints" / "best.pt").write_bytes(b"\0" * 1024)
    (d / "empty_run").mkdir()
    (d / "empty_run" / "run.json").write_text(json.dumps({"family": "rcan", "model": {"ndim": 2}}))
    (d / "config.json").write_text(json.dumps({"training_data_dir": {"raw": "raw", "gt": "gt"}}))
    (d / "broken.json").write_text("{not json")
    (d / "a_file").write_text("x")
    return d


def stream_args(f, out):
    return ["stream", "--replay", f / "movie.tif", "--fps", "5", "-m", f / "m2d.onnx", "--backend", "ort"]


CASES = {
    # name: (args built from (inputs, output folder), the argument the message must name)
    "stream -o unknown suffix": (lambda f, o: stream_args(f, o) + ["-o", o / "out.xyz"], "-o"),
    "stream -o missing folder": (lambda f, o: stream_args(f, o) + ["-o", o / "nonexistent" / "dir" / "out.tif"], "-o"),
    "stream -o folder is a file": (lambda f, o: stream_args(f, o) + ["-o", f / "a_file" / "out.tif"], "-o"),
    "stream -o is the input": (lambda f, o: stream_args(f, o) + ["-o", f / "movie.tif"], "-o"),
    "stream -o and --no-output": (lambda f, o: stream_args(f, o) + ["-o", o / "o.tif", "--no-output"], "--no-output"),
    "stream no output": (lambda f, o: stream_args(f, o), "--no-output"),
    "stream --fps 0": (lambda f, o: ["stream", "--replay", f / "movie.tif", "--fps", "0", "-m", f / "m2d.onnx",
                                     "-o", o / "o.tif"], "--fps"),
    "stream --max-queue 0": (lambda f, o: stream_args(f, o) + ["-o", o / "o.tif", "--max-queue", "0"], "--max-queue"),
    "stream --frames beyond movie": (lambda f, o: stream_args(f, o) + ["-o", o / "o.tif", "--frames", "100"],
                                     "--frames"),
    "stream --loop without --frames": (lambda f, o: stream_args(f, o) + ["--no-output", "--loop"], "--loop"),
    "stream --json unknown suffix": (lambda f, o: stream_args(f, o) + ["--no-output", "--json", o / "r.txt"], "--json"),
    "stream 3D model": (lambda f, o: ["stream", "--replay", f / "movie.tif", "--fps", "5", "-m", f / "m3d.onnx",
                                      "--no-output"], "-m"),
    "stream two-channel model": (lambda f, o: ["stream", "--replay", f / "movie.tif", "--fps", "5", "-m",
                                               f / "m2d_2ch.onnx", "--no-output"], "-m"),
    "bench --data with too few axes": (lambda f, o: ["bench", f / "m3d.onnx", "--data", f / "frame.tif"], "--data"),
    "stream volume as movie": (lambda f, o: ["stream", "--replay", f / "volume.tif", "--fps", "5", "-m",
                                             f / "m2d.onnx", "--no-output"], "--replay"),
    "stream model not onnx": (lambda f, o: ["stream", "--replay", f / "movie.tif", "--fps", "5", "-m",
                                            f / "config.json", "--no-output"], "-m"),
    "bench --json missing folder": (lambda f, o: ["bench", f / "m2d.onnx", "--json", o / "nonexistent" / "x.json"],
                                    "--json"),
    "bench --json suffix": (lambda f, o: ["bench", f / "m2d.onnx", "--json", o / "x.csv"], "--json"),
    "bench -B within halo": (lambda f, o: ["bench", f / "m2d.onnx", "-B", "4,4"], "-B"),
    "bench -B not divisible": (lambda f, o: ["bench", f / "m2d_div4.onnx", "-B", "66,64"], "-B"),
    "bench -B wrong count": (lambda f, o: ["bench", f / "m2d.onnx", "-B", "16,64,64"], "-B"),
    "bench --shape wrong count": (lambda f, o: ["bench", f / "m2d.onnx", "--shape", "64"], "--shape"),
    "bench --batch 0": (lambda f, o: ["bench", f / "m2d.onnx", "--batch", "0"], "--batch"),
    "bench --repeats 0": (lambda f, o: ["bench", f / "m2d.onnx", "--repeats", "0"], "--repeats"),
    "bench --rate negative": (lambda f, o: ["bench", f / "m2d.onnx", "--rate", "-5"], "--rate"),
    "build --tile within halo": (lambda f, o: ["build", f / "m2d.onnx", "--tile", "4,4", "-o", o / "e"], "--tile"),
    "build --tile not divisible": (lambda f, o: ["build", f / "m2d_div4.onnx", "--tile", "66,64", "-o", o / "e"],
                                   "--tile"),
    "build --tile wrong count": (lambda f, o: ["build", f / "m2d.onnx", "--tile", "64", "-o", o / "e"], "--tile"),
    "build --batch 0": (lambda f, o: ["build", f / "m2d.onnx", "--tile", "64,64", "--batch", "0", "-o", o / "e"],
                        "--batch"),
    "build --workspace 0": (lambda f, o: ["build", f / "m2d.onnx", "--tile", "64,64", "--workspace", "0",
                                          "-o", o / "e"], "--workspace"),
    "build -o under a file": (lambda f, o: ["build", f / "m2d.onnx", "--tile", "64,64", "-o", f / "a_file" / "e"],
                              "-o/--out-dir"),
    "export -o unknown suffix": (lambda f, o: ["export", f / "run", "-o", o / "out.txt"], "-o"),
    "export -o unwritable": (lambda f, o: ["export", f / "run", "-o", "/proc/scopert_test/out.onnx"], "-o"),
    "export -o under a file": (lambda f, o: ["export", f / "run", "-o", f / "a_file" / "m.onnx"], "-o"),
    "export no checkpoint": (lambda f, o: ["export", f / "empty_run", "-o", o / "m.onnx"], "RUN_FOLDER"),
    "export not a run": (lambda f, o: ["export", o, "-o", o / "m.onnx"], "RUN_FOLDER"),
    "export --opset 5": (lambda f, o: ["export", f / "run", "-o", o / "m.onnx", "--opset", "5"], "opset"),
    "export --calib used by nothing": (lambda f, o: ["export", f / "run", "-o", o / "m.onnx", "--calib",
                                                     f / "movie.tif", "--no-cpu-gates"], "--calib"),
    "export --safety-factor 0": (lambda f, o: ["export", f / "run", "-o", o / "m.onnx", "--fp16",
                                               "--safety-factor", "0"], "--safety-factor"),
    "train -o under a file": (lambda f, o: ["train", "rcan", "-c", f / "config.json", "-o", f / "a_file" / "run"],
                              "-o"),
    "train -o unwritable": (lambda f, o: ["train", "rcan", "-c", f / "config.json", "-o", "/proc/scopert_run"], "-o"),
    "train -o is a file": (lambda f, o: ["train", "rcan", "-c", f / "config.json", "-o", f / "a_file"], "-o"),
    "train -c broken": (lambda f, o: ["train", "rcan", "-c", f / "broken.json", "-o", o / "run"], "-c"),
}


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_argument_exits_2_fast_and_writes_nothing(name, files, tmp_path, monkeypatch, capsys):
    build_args, option = CASES[name]
    args = [str(a) for a in build_args(files, tmp_path)]
    inputs_before, outputs_before = tree(files), tree(tmp_path)
    monkeypatch.setattr(sys, "argv", ["scopert", *args])
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main()
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert option in err and "Traceback" not in err, err
    assert seconds < SECONDS, f"{name}: refused after {seconds:.2f} s"
    assert tree(files) == inputs_before and tree(tmp_path) == outputs_before


@pytest.mark.parametrize("args", [["export", "{run}", "-o", "{out}/m.txt"],
                                  ["train", "rcan", "-c", "{config}", "-o", "{inputs}/a_file/run"]])
def test_export_and_train_refuse_before_torch_loads(args, files, tmp_path):
    """A fresh interpreter: the refusal comes before torch (1-2 s of imports) is imported at all."""
    args = [a.format(run=files / "run", out=tmp_path, config=files / "config.json", inputs=files) for a in args]
    code = ("import atexit, sys; atexit.register(lambda: print('TORCH', 'torch' in sys.modules, file=sys.stderr)); "
            f"sys.argv = ['scopert'] + {args!r}; from scopert.cli import main; main()")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - t0
    assert res.returncode == 2 and "-o" in res.stderr and "TORCH False" in res.stderr, res.stderr
    assert seconds < 10  # interpreter start included; the point is the line above
    assert tree(tmp_path) == []


def test_card_read_from_metadata_matches_onnxruntime(files):
    import onnxruntime as ort

    session = ort.InferenceSession(str(files / "m2d_div4.onnx"), providers=["CPUExecutionProvider"])
    assert onnx_metadata(files / "m2d_div4.onnx") == session.get_modelmeta().custom_metadata_map
    card = model_card(files / "m2d_div4.onnx")
    assert card.input.divisor == {"y": 4, "x": 4} and card.halo == {"y": 2, "x": 2}


def test_good_stream_arguments_pass_preflight(files, tmp_path):
    from scopert.commands.stream import plan_stream

    plan = plan_stream(files / "movie.tif", 5, files / "m2d.onnx", tmp_path / "o.tif", False, 4, 50, True,
                       tmp_path / "r.json")
    assert (plan.total, plan.movie_frames, plan.output) == (50, 6, tmp_path / "o.tif")
    assert tree(tmp_path) == []
    np.testing.assert_equal(plan.fps, 5.0)
