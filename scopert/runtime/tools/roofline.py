"""How far a run is from the CPU's limit: FLOPs per output voxel of a graph, the CPU's measured peak, and
the achieved fraction of it.

Counting rule (``count_flops``). One multiply-add is 2 FLOPs. The ONNX file is read by OpenVINO (so the
runtime needs neither onnx nor torch), reshaped to the tile shape, and only the ops that do the arithmetic
of these networks are counted:

- Convolution (ONNX Conv): 2 x output elements x (Cin / groups) x kernel volume.
- ConvolutionBackpropData (ONNX ConvTranspose): 2 x input elements x (Cout / groups) x kernel volume.
- MatMul (ONNX MatMul, Gemm, and attention's Q.K^T and A.V products): 2 x output elements x K.
- ScaledDotProductAttention, where present as one op: 2 x L x S x (E + Ev) per batch/head.

Bias adds, activations, norms, pooling, resize and softmax are not counted: they are a few FLOPs per
element (well under 1 % of a 3x3x3 convolution's) and memory-bound. A voxel is one spatial position of the
output (batch and spatial axes; channels are not multiplied in), so FLOPs/voxel of a stride-1 conv net is
about twice its parameter count.

Peak (``measure_peak``): 1024^3 and 2048^3 matrix products and a 3x3 convolution of 256 channels built in
OpenVINO and compiled with the same properties the backend uses (LATENCY, threads = cores, the precision
hint), the best over kernels and runs.
That is the engine's own dense-kernel ceiling for f32 and bf16 on this CPU. Single readings move by up to 2x
on a virtual machine (1024^3 f32 read 147-255 GFLOP/s within a minute on a quiet 2-core Xeon VM), so a
benchmark measures the peak before and after its workloads and keeps the best (``best_peak``).
``formula_peak`` gives the paper figure from cores x vector width x FMA units x clock (AMX: 1024 bf16
FLOP per cycle and core), each factor with its source.

Imports numpy and the standard library; openvino lazily. Never torch or onnx.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scopert.errors import BackendError

log = logging.getLogger(__name__)

PEAK_SIZES = (1024, 2048)
COUNTING_RULE = ("2 FLOPs per multiply-add of Conv, ConvTranspose, MatMul/Gemm and attention products; "
                 "bias, activations, norms, pooling, resize and softmax not counted; per output voxel "
                 "(batch x spatial positions, channels not multiplied)")


@dataclass
class FlopCount:
    """The counted FLOPs of one tile shape, split by op type."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    output_voxels: int
    flops: float
    by_op: dict[str, float] = field(default_factory=dict)

    @property
    def flops_per_voxel(self) -> float:
        return self.flops / max(self.output_voxels, 1)

    def as_dict(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "output_shape": list(self.output_shape),
                "output_voxels": self.output_voxels, "gflops": round(self.flops / 1e9, 4),
                "flops_per_voxel": round(self.flops_per_voxel), "by_op": {k: round(v) for k, v in self.by_op.items()},
                "rule": COUNTING_RULE}


def _shape(port: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in port.get_partial_shape().to_shape())


def op_flops(op: Any) -> float:
    """FLOPs of one OpenVINO op by the counting rule (0 for ops that are not counted)."""
    kind = op.get_type_name()
    if kind in ("Convolution", "GroupConvolution"):
        out, w = _shape(op.output(0)), _shape(op.input_value(1))
        # Convolution weights [Cout, Cin, k...]; GroupConvolution [G, Cout/G, Cin/G, k...]
        cin_per_group, kernel = (w[1], w[2:]) if kind == "Convolution" else (w[2], w[3:])
        return 2.0 * float(np.prod(out)) * cin_per_group * float(np.prod(kernel))
    if kind in ("ConvolutionBackpropData", "GroupConvolutionBackpropData"):
        inp, w = _shape(op.input_value(0)), _shape(op.input_value(1))
        # weights [Cin, Cout, k...]; grouped [G, Cin/G, Cout/G, k...]: every input element meets Cout/G x k weights
        cout_per_group, kernel = (w[1], w[2:]) if kind == "ConvolutionBackpropData" else (w[2], w[3:])
        return 2.0 * float(np.prod(inp)) * cout_per_group * float(np.prod(kernel))
    if kind == "MatMul":
        a, out = _shape(op.input_value(0)), _shape(op.output(0))
        transpose_a = bool(op.get_attributes().get("transpose_a", False))
        k = a[-1] if len(a) == 1 else (a[-2] if transpose_a else a[-1])
        return 2.0 * float(np.prod(out)) * k
    if kind == "ScaledDotProductAttention":
        q, v = _shape(op.input_value(0)), _shape(op.input_value(2))
        s = _shape(op.input_value(1))[-2]
        return 2.0 * float(np.prod(q[:-1])) * s * (q[-1] + v[-1])
    return 0.0


def count_flops(model_path: str | Path, input_shape: tuple[int, ...], output_axes: str | None = None) -> FlopCount:
    """FLOPs of ``model_path`` (ONNX) for one input batch of ``input_shape`` (model layout, batch first).

    ``output_axes`` (the card's, e.g. 'btcyx') says which output axes are voxels (all but 'c'); without it
    axis 1 is taken as channels."""
    try:
        import openvino as ov
    except ImportError:
        raise BackendError("counting FLOPs needs OpenVINO (`pip install 'scopert[cpu]'`).") from None
    core = ov.Core()
    model = core.read_model(str(model_path))
    model.reshape({model.inputs[0]: ov.PartialShape([int(s) for s in input_shape])})
    by_op: dict[str, float] = {}
    for op in model.get_ops():
        f = op_flops(op)
        if f:
            by_op[op.get_type_name()] = by_op.get(op.get_type_name(), 0.0) + f
    out = _shape(model.outputs[0])
    if output_axes and len(output_axes) == len(out):  # voxels: every axis but channels ('btcyx' counts t, y, x)
        voxels = int(np.prod([n for a, n in zip(output_axes, out) if a != "c"]))
    else:  # batch x the axes after the channel axis
        voxels = int(out[0] * np.prod(out[2:] if len(out) > 2 else out[1:]))
    return FlopCount(tuple(int(s) for s in input_shape), out, voxels, float(sum(by_op.values())), by_op)


@dataclass
class Peak:
    """A measured dense-kernel peak of one precision."""

    precision: str
    gflops: float
    seconds: float
    how: str

    def as_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "gflops": round(self.gflops, 1), "seconds": round(self.seconds, 5),
                "how": self.how}


def _peak_kernels(ov: Any, ops: Any, sizes: tuple[int, ...], rng: np.random.Generator):
    """(name, FLOPs, model, input) of each dense kernel the peak is read from: square MatMuls of ``sizes`` and,
    for the default sizes, a 3x3 convolution with 256 channels (on AMX CPUs it reaches more than the MatMul)."""
    for n in sizes:
        a = ops.parameter([n, n], np.float32, name="a")
        b = ops.constant(rng.standard_normal((n, n)).astype(np.float32))
        yield (f"{n}x{n}x{n} MatMul", 2.0 * n ** 3, ov.Model([ops.matmul(a, b, False, False)], [a], "peak"),
               rng.standard_normal((n, n)).astype(np.float32))
    if sizes == PEAK_SIZES:
        c, hw = 256, 32
        x = ops.parameter([1, c, hw, hw], np.float32, name="x")
        w = ops.constant((rng.standard_normal((c, c, 3, 3)) * 0.02).astype(np.float32))
        conv = ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
        yield (f"3x3 Conv {c}->{c} ch on {hw}x{hw}", 2.0 * c * c * 9 * hw * hw, ov.Model([conv], [x], "peak"),
               rng.standard_normal((1, c, hw, hw)).astype(np.float32))


def measure_peak(precision: str = "f32", threads: int | None = None, size: int | tuple[int, ...] = PEAK_SIZES,
                 repeats: int = 10) -> Peak:
    """Best GFLOP/s of OpenVINO's dense kernels at ``precision`` ('f32' or 'bf16'): square MatMuls of each
    ``size`` (and a wide 3x3 convolution for the default sizes), compiled as the backend compiles."""
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        raise BackendError("measuring the CPU peak needs OpenVINO (`pip install 'scopert[cpu]'`).") from None
    threads = int(threads or os.cpu_count() or 1)
    sizes = (size,) if isinstance(size, int) else tuple(size)
    core = ov.Core()
    best: Peak | None = None
    names = []
    for name, flops, model, x in _peak_kernels(ov, ops, sizes, np.random.default_rng(0)):
        names.append(name)
        compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                                                     "INFERENCE_PRECISION_HINT": precision})
        req = compiled.create_infer_request()
        req.infer({0: x})  # warm-up
        seconds = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            req.infer({0: x})
            seconds = min(seconds, time.perf_counter() - t0)
        peak = Peak(precision, flops / seconds / 1e9, seconds,
                    f"OpenVINO {name}, {threads} threads, INFERENCE_PRECISION_HINT={precision}, best of {repeats}")
        best = peak if best is None or peak.gflops > best.gflops else best
    assert best is not None
    if len(names) > 1:
        best.how += f" (the best of: {'; '.join(names)})"
    return best


def best_peak(*peaks: Peak | None) -> Peak | None:
    """The highest of several readings of one precision's peak (before and after a benchmark, say)."""
    found = [p for p in peaks if p is not None]
    return max(found, key=lambda p: p.gflops) if found else None


def formula_peak(flags: frozenset[str], cpuinfo: str | Path = "/proc/cpuinfo", threads: int | None = None
                 ) -> dict[str, Any]:
    """cores x FLOPs per cycle and core x clock for f32 and bf16, with the source of every factor (an upper
    bound on paper).

    f32: lanes x FMA units x 2. FMA units per core are not reported by the CPU: 2 is assumed for AVX-512/AVX2
    server cores (Intel Skylake-SP and later Xeons with two 512-bit FMA ports, AMD Zen 2-5), and said so.
    bf16: AMX (amx_bf16) 1024 FLOP per cycle and core, as Intel states for 4th-gen Xeon; else avx512_bf16's
    dot products do twice the f32 rate; else none (bf16 runs as f32)."""
    cores = int(threads or os.cpu_count() or 1)
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags or "avx" in flags else 4
    mhz = None
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":")[1])
                break
    except (OSError, ValueError, IndexError):
        mhz = None
    fma_units = 2
    f32_per_cycle = lanes * fma_units * 2
    if "amx_bf16" in flags:
        bf16_per_cycle, bf16_source = 1024, "1024 (amx_bf16 in cpu flags: Intel AMX, 1024 bf16 FLOP/cycle/core)"
    elif "avx512_bf16" in flags:
        bf16_per_cycle, bf16_source = 2 * f32_per_cycle, f"{2 * f32_per_cycle} (avx512_bf16: 2x the f32 FMA rate)"
    else:
        bf16_per_cycle = None
        bf16_source = "none (neither AMX nor AVX-512 bf16 in cpu flags: bf16 runs at the f32 rate)"

    def gflops(per_cycle: int | None) -> float | None:
        return round(cores * per_cycle * mhz / 1e3, 1) if mhz and per_cycle else None

    return {"gflops_f32": gflops(f32_per_cycle), "gflops_bf16": gflops(bf16_per_cycle),
            "cores": f"{cores} (os.cpu_count: the threads the engines use)",
            "f32_lanes": f"{lanes} ({'avx512f' if lanes == 16 else 'avx2/avx' if lanes == 8 else 'sse'} in cpu flags)",
            "fma_units": f"{fma_units} (assumed: not reported by the CPU)",
            "bf16_flop_per_cycle": bf16_source,
            "clock_mhz": f"{mhz} (/proc/cpuinfo 'cpu MHz', the current clock, not the turbo ceiling)"}


def achieved(count: FlopCount, seconds: float, peak: Peak | None) -> dict[str, Any]:
    """GFLOP/s of one timed batch of ``count``'s shape, and its fraction of ``peak``."""
    gflops = count.flops / seconds / 1e9
    return {"gflops": round(gflops, 1), "fraction_of_peak": round(gflops / peak.gflops, 3) if peak else None,
            "peak_gflops": round(peak.gflops, 1) if peak else None}
