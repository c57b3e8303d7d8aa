"""Issue 15's device check: the GPU path run for real, ready before any GPU was lent.

Needs torch (CUDA build), cupy, cuda-python and ONNX Runtime (CPU); TensorRT is optional; no package registry.
``onnx``, ``tifffile`` and ``h5py`` come from the image or, when it lacks them, from the parts of this checkout's
``.venv/lib/python3.11/site-packages`` carried to the machine (same Python 3.11 only).

1. cuda-python for real, through ``scopert.runtime.backends.cuda_adapter``: device and pinned buffers, async
   copies on several streams, blocking-sync events (the waiting thread's CPU time is measured: it must sleep,
   not spin), event timings; then a tiled ``predict`` through the pipeline and ``TrtBackend`` with a CUDA identity
   "engine" (a cupy copy kernel on the slot's stream in place of TensorRT): every slot in flight, output == input.
2. each family's strongly typed FP16 graph (``precision.convert_fp16`` on real tiles) evaluated on the GPU in real
   float16, node by node (the ops of ``half_emulation``, CUDA tensors), against ONNX Runtime FP32: PSNR beside the
   CPU prediction written in the card; the GPU may not fall more than 3 dB below the prediction, and no NaN/Inf.
3. each family timed in torch FP16 on the GPU (CUDA graphs, the default tile, a batch sweep): Mvox/s and the
   fraction of the GPU's FP16 dense tensor peak.
4. when TensorRT is installed: defects 1, 3 and 4 for real (gpu-check's FP32 reference, TF32 off in the engine
   key, two slots vs one slot give equal outputs). Without a GPU (``--dry-run``) the same code runs against the
   fake ``tensorrt`` and fake ``cuda.bindings.runtime`` of ``tests/fakes``.

Writes ``benchmarks/results/gpu_<device>.md`` (+ .json); ``--dry-run`` writes ``gpu_dry-run.md`` to ``--out``.
``--make-data`` rebuilds ``benchmarks/device_check_data.npz`` (real crops) from ``../shared/data``.
Exit status: 0 all steps passed or skipped, 1 a step failed, 3 a required package is missing.

    bash scripts/device_check.sh [--dry-run] [--out DIR] [--families a,b]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CARRIED_SITE = REPO / ".venv" / "lib" / "python3.11" / "site-packages"
DATA_NPZ = REPO / "benchmarks" / "device_check_data.npz"
log = logging.getLogger("device_check")

# FP16 dense tensor-core peak (TFLOPS, FP32 accumulate where the data sheet separates it), by device-name pattern.
FP16_DENSE_TFLOPS = [
    (r"H200", 989.4), (r"H100.*(SXM|HBM3)", 989.4), (r"H100.*NVL", 835.0), (r"H100", 756.0), (r"GH200", 989.4),
    (r"B200", 2250.0), (r"A100", 312.0), (r"L40S", 362.1), (r"L40", 181.0), (r"L4\b", 121.0), (r"A10\b", 125.0),
    (r"RTX 6000 Ada", 364.2), (r"RTX 4090", 165.2), (r"RTX 3090", 71.0), (r"A6000", 154.8), (r"V100", 125.0),
    (r"T4\b", 65.0),
]

# Step 2 (accuracy): small real tiles; the halo only shapes tiling, so it is set small to keep CPU work short.
FAMILIES = {
    "rcan3d": {"data": "ovule", "tile": {"z": 8, "y": 32, "x": 32}, "halo": 2},
    "unet3d_gn": {"data": "ovule", "tile": {"z": 16, "y": 64, "x": 64}, "halo": 0},
    "blindspot2d": {"data": "bulk_water", "tile": {"y": 128, "x": 128}, "halo": 16},
    "tagan2d": {"data": "em", "tile": {"y": 64, "x": 64}, "halo": 8},
    "cnnt2dt": {"data": "bulk_water", "tile": {"y": 32, "x": 32}, "halo": 8},
    "care2d": {"data": "nuclei", "tile": {"y": 128, "x": 128}, "halo": 16},
}
DRY_FAMILIES = ("care2d",)  # the CI dry run; `--families all` runs every family on the CPU (minutes)
BATCHES = (1, 2, 4, 8)
MAX_PREDICTION_SHORTFALL_DB = 3.0


@dataclass
class Step:
    name: str
    status: str = "pass"  # "pass", "fail: ...", "skipped: ..."
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        if not self.status.startswith("fail"):
            self.status = f"fail: {why}"
        self.lines.append(f"FAIL: {why}")

    def check(self, ok: bool, what: str) -> bool:
        self.lines.append(f"{'ok' if ok else 'FAIL'}: {what}")
        if not ok:
            self.fail(what)
        return ok


@dataclass
class Env:
    dry: bool
    gpu: bool
    device: str
    tmp: Path
    families: list[str]
    torch_device: str
    deadline: float


# ---- environment ------------------------------------------------------------------------------------------
def import_requirements() -> list[str]:
    """Import what the check needs; fall back to carried site-packages for onnx/tifffile/h5py. Missing names."""
    missing = []
    for name in ("numpy", "torch", "onnxruntime", "onnx", "tifffile", "h5py"):
        try:
            __import__(name)
        except ImportError:
            if CARRIED_SITE.is_dir() and str(CARRIED_SITE) not in sys.path:
                sys.path.append(str(CARRIED_SITE))  # after the image's own packages
                try:
                    __import__(name)
                    continue
                except ImportError:
                    pass
            missing.append(name)
    return missing


def gpu_present() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "no torch"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    return True, torch.cuda.get_device_name(0)


def peak_tflops(device: str) -> float | None:
    for pattern, tflops in FP16_DENSE_TFLOPS:
        if re.search(pattern, device):
            return tflops
    return None


def real_data() -> dict[str, Any]:
    import numpy as np

    with np.load(DATA_NPZ) as z:
        return {k: np.asarray(z[k]) for k in z.files}


def make_data(shared: Path) -> None:
    """Real crops with permissive licences (sources in the npz's 'sources' entry)."""
    import h5py
    import numpy as np
    import tifffile

    data = shared / "data"
    with h5py.File(data / "ovule_3d_seg" / "pytorch3dunet_sample_patch.h5") as f:
        ovule = np.asarray(f["raw"][20:36, 36:164, 36:164])
    bulk = tifffile.imread(data / "trackpy_bulk_water" / "bulk_water_first40.tif", key=range(16))[:, 100:228, 200:328]
    em = tifffile.imread(data / "isbi2012_em" / "isbi2012_train_volume.tif", key=0)[:256, :256]
    nuclei = tifffile.imread(data / "stardist_nuclei_2d" / "stardist_dsb2018_img2d.tif")[128:384, 128:384]
    sources = ("ovule: wolny/pytorch-3dunet resources/sample_patch.h5 (MIT; PlantSeg ovule data); bulk_water: "
               "soft-matter/trackpy-examples bulk_water (BSD-3/CC-BY 3.0); em: ISBI 2012 ssTEM via zhixuhao/unet "
               "(MIT; cite Cardona 2010, Arganda-Carreras 2015); nuclei: stardist 0.9.2 img2d (DSB2018, CC0)")
    np.savez_compressed(DATA_NPZ, ovule=ovule, bulk_water=bulk, em=em, nuclei=nuclei, sources=np.array(sources))
    print(f"wrote {DATA_NPZ} ({DATA_NPZ.stat().st_size / 1e3:.0f} kB)")


# ---- step 1: the adapter for real and an identity engine through the pipeline ----------------------------
def open_cuda(env: Env):
    from scopert.runtime.backends.cuda_adapter import CudaRuntime

    if env.gpu:
        return CudaRuntime.load(), None
    from tests.fakes.fake_cudart import FakeCudaRuntimeModule

    rt = FakeCudaRuntimeModule()
    return CudaRuntime(rt), rt


def step_adapter(env: Env, step: Step) -> None:
    import numpy as np

    from scopert.runtime.backends.cuda_adapter import D2H, H2D

    cuda, fake = open_cuda(env)
    name, major, minor = cuda.device_properties(0)
    probe = cuda.probe()
    where = "" if env.gpu else " (fake cuda.bindings.runtime)"
    step.lines.append(f"device {name} (sm {major}.{minor}){where}; {probe.explain()}")
    nbytes = (64 << 20) if env.gpu else (1 << 20)
    streams = [cuda.stream_create() for _ in range(3)]
    slots = []
    for k, stream in enumerate(streams):  # every copy of every stream queued before the first wait
        h_in, h_out, dev = cuda.malloc_host(nbytes), cuda.malloc_host(nbytes), cuda.malloc(nbytes)
        h_in[1][:] = np.arange(nbytes, dtype=np.uint32).astype(np.uint8) ^ k
        start, done = cuda.event_create(), cuda.event_create(blocking_sync=True)
        cuda.event_record(start, stream)
        cuda.memcpy_async(dev, h_in[0], nbytes, H2D, stream)
        cuda.memcpy_async(h_out[0], dev, nbytes, D2H, stream)
        cuda.event_record(done, stream)
        slots.append((stream, h_in, h_out, dev, start, done))
    rates = []
    for stream, h_in, h_out, dev, start, done in slots:
        cuda.event_synchronize(done)
        ms = cuda.event_elapsed_ms(start, done)
        step.check(bool(np.array_equal(h_in[1], h_out[1])), f"round trip of {nbytes >> 20} MiB on stream "
                   f"{cuda.stream_handle(stream):#x} returns the bytes")
        step.check(ms > 0, f"event timing {ms:.3f} ms > 0")
        rates.append(2 * nbytes / (ms * 1e-3) / 1e9 if ms > 0 else 0.0)
    step.data["h2d_plus_d2h_gb_s"] = [round(r, 2) for r in rates]
    step.lines.append("H2D+D2H throughput per stream (GB/s): " + ", ".join(f"{r:.1f}" for r in rates))
    if env.gpu:
        blocking, spinning = wait_cpu_share(cuda, True), wait_cpu_share(cuda, False)
        step.data.update(wait_cpu_share_blocking=blocking, wait_cpu_share_plain=spinning)
        step.check(blocking < 0.5, f"a blocking-sync wait used {blocking:.0%} of a core (plain event: "
                   f"{spinning:.0%})")
    else:
        step.check(fake.spin_waits == 0, "every wait was on a cudaEventBlockingSync event (fake runtime)")
        step.lines.append("skipped: no GPU (the CPU share of a real blocking wait)")
    for stream, h_in, h_out, dev, start, done in slots:
        cuda.free_host(h_in[0]), cuda.free_host(h_out[0]), cuda.free(dev)
        cuda.event_destroy(start), cuda.event_destroy(done), cuda.stream_destroy(stream)


def wait_cpu_share(cuda, blocking: bool, nbytes: int = 256 << 20, copies: int = 16) -> float:
    """CPU seconds / wall seconds of a host thread waiting on ~``copies`` large H2D copies."""
    from scopert.runtime.backends.cuda_adapter import H2D

    stream = cuda.stream_create()
    host, dev = cuda.malloc_host(nbytes), cuda.malloc(nbytes)
    done = cuda.event_create(blocking_sync=blocking)
    for _ in range(copies):
        cuda.memcpy_async(dev, host[0], nbytes, H2D, stream)
    cuda.event_record(done, stream)
    c0, w0 = time.process_time(), time.perf_counter()
    cuda.event_synchronize(done)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    cuda.free_host(host[0]), cuda.free(dev), cuda.event_destroy(done), cuda.stream_destroy(stream)
    return cpu / wall if wall > 0 else 0.0


def identity_onnx(path: Path):
    """A one-node Identity graph with a card (crop stitching, no normalization): the engine stand-in's model."""
    import onnx
    from onnx import TensorProto, helper

    from scopert.card import ModelCard, Normalization, TensorSpec

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "identity",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 1, "z", "y", "x"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 1, "z", "y", "x"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(family="identity", name=path.stem, input=TensorSpec("input", "bczyx"),
                     output=TensorSpec("output", "bczyx"), halo={"z": 2, "y": 4, "x": 4}, tile_invariant=True,
                     normalization=Normalization(kind="none"))
    card.validate()
    card.embed(model)
    onnx.save(model, str(path))
    return card


def identity_executor(env: Env, fake) -> Callable[..., None]:
    """The engine stand-in: copy input to output on the slot's stream (cupy kernel on GPU, fake stream on CPU)."""
    import numpy as np

    if not env.gpu:
        def fake_copy(stream, src, dst, in_shape, out_shape, in_np, out_np, model) -> None:
            n = int(np.prod(in_shape)) * in_np.itemsize

            def kernel() -> None:
                fake.device_view(dst, n)[:] = fake.device_view(src, n)

            fake.enqueue(stream, kernel, 0.01)

        return fake_copy
    import cupy

    def cupy_copy(stream, src, dst, in_shape, out_shape, in_np, out_np, model) -> None:
        n = int(np.prod(in_shape)) * in_np.itemsize

        def view(ptr: int):
            mem = cupy.cuda.UnownedMemory(ptr, n, None)
            return cupy.ndarray(tuple(in_shape), in_np, cupy.cuda.MemoryPointer(mem, 0))

        with cupy.cuda.ExternalStream(stream):
            view(dst)[...] = view(src)  # an elementwise kernel on the slot's stream, as execute_async_v3 would be

    return cupy_copy


def step_identity_predict(env: Env, step: Step) -> None:
    import numpy as np

    from scopert.export.trt_builder import build_engine, probe_gpu
    from scopert.runtime.backends.trt import TrtBackend
    from scopert.runtime.model import Model
    from tests.fakes.fake_tensorrt import make_fake_tensorrt

    cuda, fake = open_cuda(env)
    trt = make_fake_tensorrt("10.16.1.11", fake, executor=identity_executor(env, fake),
                             device_name=cuda.device_properties(0)[0])
    onnx_path = env.tmp / "identity.onnx"
    identity_onnx(onnx_path)
    built = build_engine(onnx_path, (8, 32, 32), 2, out_dir=env.tmp / "engines", trt=trt,
                         gpu=probe_gpu(trt.__version__, cuda))
    backend = TrtBackend(built.engine_path, trt=trt, cuda=cuda)
    outstanding = {"now": 0, "max": 0}
    submit, collect = backend.submit, backend.collect

    def counting_submit(batch):
        ticket = submit(batch)
        outstanding["now"] += 1
        outstanding["max"] = max(outstanding["max"], outstanding["now"])
        return ticket

    def counting_collect(ticket):
        outstanding["now"] -= 1
        return collect(ticket)

    backend.submit, backend.collect = counting_submit, counting_collect
    vol = real_data()["ovule"].astype(np.float32)
    model = Model(backend, backend.card, built.engine_path)
    t0 = time.perf_counter()
    out = model.predict(vol, tile=(8, 32, 32), batch=2)
    seconds = time.perf_counter() - t0
    backend.close()
    step.check(out.shape == vol.shape and bool(np.array_equal(out, vol)), f"tiled predict of {vol.shape} through "
               "TrtBackend + identity engine returns the input exactly")
    step.check(outstanding["max"] == backend.max_in_flight == 2, f"slots in flight: {outstanding['max']} of "
               f"{backend.max_in_flight}")
    step.check(trt.profile_conflicts == [], "no two in-flight contexts on one optimization profile")
    step.data.update(batches=model.last_stats.batches, seconds=round(seconds, 3),
                     max_in_flight=outstanding["max"])
    step.lines.append(f"{model.last_stats.batches} batches in {seconds:.2f} s")


# ---- step 2: FP16 graphs in real float16 on the GPU ---------------------------------------------------------
def run_graph_on(model: Any, feeds: dict[str, Any], device: str) -> list[Any]:
    """``half_emulation.run_graph`` on ``device``: the graph node by node in torch, each tensor in its graph dtype."""
    import numpy as np
    import torch
    from onnx import numpy_helper

    from scopert.export.half_emulation import NotEmulated, _attributes, _ops

    ops = _ops()
    values: dict[str, Any] = {}
    for init in model.graph.initializer:
        values[init.name] = torch.from_numpy(np.array(numpy_helper.to_array(init))).to(device)
    for name, arr in feeds.items():
        values[name] = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    with torch.inference_mode(), torch.device(device):
        for node in model.graph.node:
            fn = ops.get(node.op_type)
            if fn is None:
                raise NotEmulated(f"operator {node.op_type} (node {node.name!r}) is not emulated")
            outs = fn([values[i] if i else None for i in node.input], _attributes(node))
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            for name, value in zip(node.output, outs):  # Constant & co. build CPU tensors: keep all on device
                values[name] = value.to(device) if isinstance(value, torch.Tensor) else value
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return [values[o.name].float().cpu().numpy() for o in model.graph.output]


def family_models() -> dict[str, dict]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from cpu_engines import build_models

    return build_models()


def export_family(name: str, spec: dict, path: Path) -> None:
    from cpu_engines import export

    fam = FAMILIES[name]
    trace = tuple(fam["tile"].get(a, n) for a, n in zip(spec["axes"], spec["tile"]))  # traced at the checked tile
    export(dict(spec, halo=fam["halo"], tile=trace), path)


def step_fp16_graphs(env: Env, step: Step, specs: dict[str, dict]) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from scopert.export.onnx_export import read_card
    from scopert.export.precision import _compare, convert_fp16, load_calibration

    data = real_data()
    rows = []
    for name in env.families:
        if time.monotonic() > env.deadline:
            step.fail(f"time budget spent before {name}")
            break
        fam = FAMILIES[name]
        t0 = time.perf_counter()
        fp32 = env.tmp / f"{name}.onnx"
        export_family(name, specs[name], fp32)
        calib = env.tmp / f"{name}-{fam['data']}.npy"
        np.save(calib, data[fam["data"]])
        res = convert_fp16(fp32, env.tmp / f"{name}.fp16.onnx", [calib], tiles=2, tile=fam["tile"])
        half = res.report.torch_half
        predicted = half.psnr_db if half is not None and half.ran else res.report.psnr_db
        source = "torch float16 on the CPU" if half is not None and half.ran else "ORT CPU (weight rounding)"
        card = read_card(fp32)
        tiles = load_calibration(card, [calib], tiles=2, tile=fam["tile"])  # the same seed: tile 0 is the CPU's
        session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
        fp16_model = onnx.load(str(res.path))
        psnrs, bad = [], 0
        for t in tiles:
            ref = session.run(None, {card.input.name: t[None]})[0]
            got = run_graph_on(fp16_model, {card.input.name: t[None].astype(np.float32)}, env.torch_device)[0]
            psnr, _, nonfinite = _compare(ref, got)
            psnrs.append(psnr)
            bad += nonfinite
        shortfall = predicted - psnrs[0]
        row = {"family": name, "tile": list(tiles.shape[1:]), "fp16_nodes": len(res.plan.fp16_nodes),
               "fp32_nodes": len(res.plan.fp32_nodes), "psnr_db": [round(p, 2) for p in psnrs],
               "predicted_db": round(predicted, 2), "prediction_source": source, "nonfinite": bad,
               "device": env.torch_device, "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        step.check(bad == 0 and shortfall <= MAX_PREDICTION_SHORTFALL_DB,
                   f"{name}: FP16 on {env.torch_device} {psnrs[0]:.1f} dB vs ORT FP32 (tile 0), CPU prediction "
                   f"{predicted:.1f} dB ({source}), {bad} NaN/Inf, {row['seconds']} s")
    step.data["families"] = rows
    if not env.gpu:
        step.lines.append("skipped: no GPU (ran on the CPU in float16: the code path, not the GPU's kernels; "
                          f"dry run covers {', '.join(env.families)})")


# ---- step 3: torch FP16 timing ------------------------------------------------------------------------------
def flops_per_call(module: Any, x: Any) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(x)
    return float(counter.get_total_flops())


def time_family(module: Any, tile: tuple[int, ...], batch: int, repeats: int = 20) -> tuple[float, str]:
    """Seconds per call of the FP16 module and how it ran: one captured CUDA graph (warm, static input), or
    eager launches when the module cannot be captured (host syncs or shape-dependent Python in forward)."""
    import torch

    x = torch.rand((batch,) + tuple(tile[1:]), device="cuda", dtype=torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode():
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: cudnn.benchmark picks its algorithms here, outside the capture
                module(x)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                module(x)
            run, mode = graph.replay, "CUDA graph"
        except RuntimeError as exc:
            log.warning("CUDA graph capture failed (%s); timing eager launches", str(exc).splitlines()[0])
            torch.cuda.synchronize()
            run, mode = (lambda: module(x)), "eager"
        run()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            run()
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats, mode


def step_timing(env: Env, step: Step, specs: dict[str, dict]) -> None:
    import numpy as np
    import torch

    peak = peak_tflops(env.device)
    step.data["peak_fp16_dense_tflops"] = peak
    rows = []
    for name, spec in specs.items():
        if name not in FAMILIES:
            continue
        tile, axes = tuple(spec["tile"]), spec["axes"]
        keeps_t = "c" in axes  # a window-of-frames model (no 'c' in its axes) returns one frame
        voxels = int(np.prod([n for n, a in zip(tile, axes) if a in "zyx" or (a == "t" and keeps_t)]))
        module = spec["module"]
        if not env.gpu:
            try:
                meta = module.to("meta")
                flops = flops_per_call(meta, torch.zeros(tile, device="meta"))
            except Exception as exc:  # noqa: BLE001 - some ops have no meta kernel; reported, not fatal
                flops = float("nan")
                step.lines.append(f"{name}: FLOPs not counted on meta tensors ({type(exc).__name__})")
            rows.append({"family": name, "tile": list(tile), "gflop_per_mvox": flops / voxels * 1e6 / 1e9})
            continue
        if time.monotonic() > env.deadline:
            step.fail(f"time budget spent before timing {name}")
            break
        torch.backends.cudnn.benchmark = True
        half = module.half().cuda().eval()
        flops = flops_per_call(half, torch.rand(tile, device="cuda", dtype=torch.float16))
        for batch in BATCHES:
            try:
                seconds, mode = time_family(half, tile, batch)
            except torch.cuda.OutOfMemoryError:
                step.lines.append(f"{name}: batch {batch} out of GPU memory; sweep stopped")
                torch.cuda.empty_cache()
                break
            tflops = flops * batch / seconds / 1e12
            rows.append({"family": name, "tile": list(tile), "batch": batch, "ms": round(seconds * 1e3, 3), "mode": mode,
                         "mvox_s": round(batch * voxels / seconds / 1e6, 1), "tflops": round(tflops, 1),
                         "peak_fraction": round(tflops / peak, 3) if peak else None,
                         "gflop_per_mvox": round(flops / voxels * 1e6 / 1e9, 1)})
        half.cpu()
        del half
        torch.cuda.empty_cache()
    step.data["rows"] = rows
    if not env.gpu:
        step.lines.append("skipped: no GPU (timings); FLOPs per voxel counted on meta tensors")
    else:
        best = {}
        for r in rows:
            if r["family"] not in best or r["mvox_s"] > best[r["family"]]["mvox_s"]:
                best[r["family"]] = r
        for r in best.values():
            step.lines.append(f"{r['family']}: best {r['mvox_s']} Mvox/s at batch {r['batch']} "
                              f"({r['peak_fraction'] if r['peak_fraction'] is not None else 'n/a'} of FP16 peak)")
        step.check(len(best) == len([n for n in specs if n in FAMILIES]), "every family timed")


# ---- step 4: TensorRT for real (or the fakes in a dry run) -------------------------------------------------
def step_tensorrt(env: Env, step: Step, specs: dict[str, dict]) -> None:
    import numpy as np

    from scopert.export.gpu_check import run_gpu_check
    from scopert.export.onnx_export import read_card
    from scopert.export.precision import load_calibration
    from scopert.export.trt_builder import build_engine, probe_gpu
    from scopert.runtime.backends.trt import TrtBackend

    name = next((n for n in ("care2d", "blindspot2d", *env.families) if (env.tmp / f"{n}.fp16.onnx").exists()), None)
    if name is None:
        step.status = "skipped: no FP16 model from step 2"
        return
    fp16, fp32 = env.tmp / f"{name}.fp16.onnx", env.tmp / f"{name}.onnx"
    calib = next(env.tmp.glob(f"{name}-*.npy"))
    tile = tuple(FAMILIES[name]["tile"].values())
    if env.gpu:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            step.status = "skipped: TensorRT is not installed (defects 1, 3, 4 need it on the GPU)"
            return
        trt, cuda, label = None, None, "TensorRT"
    else:
        from scopert.runtime.backends.cuda_adapter import CudaRuntime
        from tests.fakes.fake_cudart import FakeCudaRuntimeModule
        from tests.fakes.fake_tensorrt import make_fake_tensorrt, onnxruntime_executor

        rt = FakeCudaRuntimeModule()
        trt, cuda, label = make_fake_tensorrt("11.4.0.106", rt, executor=onnxruntime_executor(rt)), CudaRuntime(rt), \
            "fake tensorrt (dry run)"
        step.lines.append("skipped: no GPU (real TensorRT); the same checks ran against the fakes")
    report = run_gpu_check(fp16, [calib], tile=tile, batch=2, repeats=5, out_dir=env.tmp / "trt", trt=trt, cuda=cuda)
    step.data["gpu_check"] = {k: (v if isinstance(v, (int, float, str, bool, list)) or v is None else str(v))
                              for k, v in report.items()}
    step.check(Path(report["reference_onnx"]).resolve() == fp32.resolve(),
               f"defect 1 ({label}): gpu-check compares with the FP32 ONNX ({report['reference_found_by']}), "
               f"PSNR {report['psnr_db_vs_ort_fp32']:.1f} dB, verdict {report['verdict']}")
    step.check(report["verdict"] == "PASS", f"defect 1: the FP16 engine passes against FP32 ({name})")
    if env.gpu:
        import tensorrt as real_trt

        trt, cuda = real_trt, None
        from scopert.runtime.backends.cuda_adapter import CudaRuntime

        cuda = CudaRuntime.load()
    built = build_engine(fp32, tile, 2, out_dir=env.tmp / "trt", trt=trt, gpu=probe_gpu(trt.__version__, cuda))
    step.check(built.key.tf32 is False and built.key.profiles == 2,
               f"defect 3/4 ({label}): FP32 engine key says tf32={built.key.tf32}, profiles={built.key.profiles}")
    tiles = load_calibration(read_card(fp32), [calib], tiles=4, tile=FAMILIES[name]["tile"])
    batches = [tiles[i:i + 2] for i in range(0, 4, 2)] * 2
    two = TrtBackend(built.engine_path, trt=trt, cuda=cuda, slots=2)
    out_two = list(two.run_many(batches))
    two.close()
    one = TrtBackend(built.engine_path, trt=trt, cuda=cuda, slots=1)
    out_one = [one.run(b) for b in batches]
    one.close()
    equal = all(np.array_equal(a, b) for a, b in zip(out_two, out_one))
    step.check(equal and all(np.all(np.isfinite(a)) for a in out_two),
               f"defect 4 ({label}): two slots in flight give the same outputs as one slot")
    import onnxruntime as ort

    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    ref = np.concatenate([session.run(None, {read_card(fp32).input.name: b})[0] for b in batches])
    err = float(np.max(np.abs(np.concatenate(out_one) - ref)))
    step.lines.append(f"FP32 engine (TF32 off) max |err| vs ORT FP32: {err:.3g}")
    step.data["fp32_engine_max_abs_error"] = err


# ---- report -------------------------------------------------------------------------------------------------
def write_report(env: Env, steps: list[Step], out_dir: Path) -> Path:
    slug = "dry-run" if env.dry else re.sub(r"[^A-Za-z0-9]+", "-", env.device).strip("-").lower()
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"gpu_{slug}.md"
    lines = [f"# Device check (issue 15): {env.device}", "",
             f"`bash scripts/device_check.sh{' --dry-run' if env.dry else ''}` on {platform.node() or 'this machine'}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Python {platform.python_version()}; "
             f"{package_versions()}", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} |" for s in steps]
    for s in steps:
        lines += ["", f"## {s.name}", ""] + [f"- {line}" for line in s.lines]
        if s.data.get("families"):
            lines += ["", "| family | tile | FP16/FP32 nodes | PSNR vs ORT FP32 (dB, per tile) | CPU prediction (dB) "
                      "| NaN/Inf | device |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {r['family']} | {'x'.join(map(str, r['tile']))} | {r['fp16_nodes']}/{r['fp32_nodes']} | "
                      f"{', '.join(f'{p:.1f}' for p in r['psnr_db'])} | {r['predicted_db']:.1f} "
                      f"({r['prediction_source']}) | {r['nonfinite']} | {r['device']} |" for r in s.data["families"]]
        if s.data.get("rows"):
            lines += ["", f"FP16 dense peak used: {s.data.get('peak_fp16_dense_tflops') or 'unknown'} TFLOPS", "",
                      "| family | tile | batch | ms/batch | Mvox/s | TFLOPS | of FP16 peak | GFLOP/Mvox | launch |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r in s.data["rows"]:
                lines.append(f"| {r['family']} | {'x'.join(map(str, r['tile'][1:]))} | {r.get('batch', '-')} | "
                             f"{r.get('ms', 'skipped: no GPU')} | {r.get('mvox_s', '-')} | {r.get('tflops', '-')} | "
                             f"{r.get('peak_fraction', '-')} | {fmt(r.get('gflop_per_mvox'))} | {r.get('mode', '-')} |")
    md.write_text("\n".join(lines) + "\n")
    md.with_suffix(".json").write_text(json.dumps(
        {"device": env.device, "dry_run": env.dry, "steps": [s.__dict__ for s in steps]}, indent=1, default=str))
    return md


def fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def package_versions() -> str:
    import importlib.metadata as md

    out = []
    for dist in ("torch", "onnxruntime", "onnx", "cupy-cuda12x", "cupy-cuda13x", "cuda-python", "tensorrt"):
        try:
            out.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(out)


def run_step(name: str, fn: Callable[[Step], None], steps: list[Step]) -> Step:
    step = Step(name)
    t0 = time.perf_counter()
    try:
        fn(step)
    except Exception as exc:  # noqa: BLE001 - a step that raises has failed; the others still run
        step.fail(f"{type(exc).__name__}: {exc}")
        step.lines.append("```\n" + traceback.format_exc(limit=6) + "```")
    step.seconds = time.perf_counter() - t0
    steps.append(step)
    print(f"[{step.seconds:6.1f} s] {name}: {step.status}", flush=True)
    for line in step.lines:
        if not line.startswith("```"):
            print(f"           {line}", flush=True)
    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU only: every step that needs no GPU")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="where the report goes")
    parser.add_argument("--families", default=None, help="'all' or a comma-separated subset of " + ",".join(FAMILIES))
    parser.add_argument("--budget", type=float, default=420.0, help="seconds before later steps are cut short")
    parser.add_argument("--make-data", type=Path, default=None, metavar="SHARED",
                        help="rebuild benchmarks/device_check_data.npz from SHARED/data and exit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    missing = import_requirements()
    if args.make_data:
        make_data(args.make_data)
        return 0
    if missing:
        print(f"missing packages: {', '.join(missing)}. The check needs numpy, torch, onnxruntime and onnx "
              "(tifffile, h5py for scopert's runtime); carry .venv/lib/python3.11/site-packages/<name> for the "
              "pure ones, or install them.", file=sys.stderr)
        return 3
    gpu, device = (False, "no GPU") if args.dry_run else gpu_present()
    if not gpu and not args.dry_run:
        print(f"no GPU ({device}): run with --dry-run on a CPU machine.", file=sys.stderr)
        return 1
    families = list(DRY_FAMILIES if args.dry_run else FAMILIES)
    if args.families:
        families = list(FAMILIES) if args.families == "all" else args.families.split(",")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        print(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}", file=sys.stderr)
        return 1
    start = time.monotonic()
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="device_check_") as tmp:
        env = Env(dry=args.dry_run, gpu=gpu, device=device if gpu else "dry-run (no GPU)", tmp=Path(tmp),
                  families=families, torch_device="cuda" if gpu else "cpu", deadline=start + args.budget)
        specs = family_models()
        run_step("1a cuda-python adapter (memory, copies, streams, blocking events, timings)",
                 lambda s: step_adapter(env, s), steps)
        run_step("1b tiled predict, TrtBackend + CUDA identity engine", lambda s: step_identity_predict(env, s), steps)
        run_step("2 FP16 graphs in float16 vs ORT FP32", lambda s: step_fp16_graphs(env, s, specs), steps)
        run_step("3 torch FP16 timing (CUDA graphs, default tile, batch sweep)", lambda s: step_timing(env, s, specs),
                 steps)
        run_step("4 TensorRT: defects 1, 3, 4", lambda s: step_tensorrt(env, s, specs), steps)
        md = write_report(env, steps, args.out)
    failed = [s.name for s in steps if s.status.startswith("fail")]
    print(f"report: {md}; {time.monotonic() - start:.1f} s; " + (f"FAILED: {failed}" if failed else "all passed"
                                                                   + (" (GPU steps skipped: no GPU)" if not gpu else "")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
