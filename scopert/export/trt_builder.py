"""Build strongly typed TensorRT engines (10.12+ and 11.x) from a ScopeRT ONNX file, with an engine cache.

A thin adapter around the ``tensorrt`` Python API: parse the ONNX (errors name the node), optimization
profiles from the tile plan and batch (one identical profile per in-flight slot, because contexts used
concurrently must each select their own), a workspace limit, the builder optimization level, a timing cache
persisted in ``engines/``, and the engine written next to its sidecar card, keyed by model hash, GPU and
compute capability, TensorRT version, precision, TF32 and profiles. The precision comes from the ONNX graph
(``scopert.export.precision``); ``BuilderFlag.FP16`` is never set (gone in 11.x, deprecated in 10.12+), and
``BuilderFlag.TF32`` (on by default in TensorRT) is cleared unless ``tf32=True``: TF32 rounds conv/matmul
inputs to a 10-bit mantissa that the ONNX Runtime FP32 reference never sees. Every builder call that can fail
quietly (a None, -1 or False) is checked, and the error names the step.

``tensorrt`` and ``cuda.bindings`` are imported lazily (or injected: tests pass a fake module). Imports
onnx, ``scopert.card``, ``scopert.errors`` and ``scopert.runtime.backends.engine_key``; never torch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scopert.card import ModelCard
from scopert.checksum import sha256_file
from scopert.errors import BackendError, ConfigError, InputError, RunError
from scopert.runtime.backends.engine_key import (CARD_KEY, DEFAULT_PROFILES, ENGINE_SUFFIX, EngineKey, GpuInfo,
                                                 ProfileShapes, check_engine, read_engine_card, tile_profile)

log = logging.getLogger(__name__)

MIN_STRONG_TYPING = (10, 12)
DEFAULT_WORKSPACE_GB = 4.0
DEFAULT_OPT_LEVEL = 3
NO_TRT_FALLBACK = "ONNX Runtime runs the model instead: `scopert apply -m MODEL.onnx --backend ort`."


@dataclass(frozen=True)
class BuildPlan:
    """Everything one build needs; its key names the cached engine."""

    onnx_path: Path
    out_dir: Path
    profile: ProfileShapes
    precision: str
    workspace_bytes: int
    opt_level: int
    key: EngineKey

    @property
    def engine_path(self) -> Path:
        return self.out_dir / f"{self.onnx_path.stem}-{self.key.digest()}{ENGINE_SUFFIX}"

    @property
    def timing_cache_path(self) -> Path:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.key.gpu_name).strip("-").lower()
        return self.out_dir / f"timing-{slug}-sm{self.key.compute_capability.replace('.', '')}-trt{self.key.trt_version}.cache"


@dataclass
class BuildResult:
    engine_path: Path
    card_path: Path
    key: EngineKey
    reused: bool
    build_seconds: float
    timing_cache_path: Path
    timing_cache_reused: bool


# ---- environment -----------------------------------------------------------------------------------------
def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError(
            "TensorRT is not installed (the Python package `tensorrt` cannot be imported), so no engine can be "
            f"built here. Install TensorRT 10.12+ or 11.x on a machine with an NVIDIA GPU; {NO_TRT_FALLBACK}"
        ) from None
    return trt


def trt_version_tuple(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", str(version))
    if not m:
        raise BackendError(f"cannot read the TensorRT version {version!r}; reinstall TensorRT.")
    return int(m.group(1)), int(m.group(2))


def check_strong_typing(version: str) -> None:
    if trt_version_tuple(version) < MIN_STRONG_TYPING:
        raise BackendError(
            f"TensorRT {version} is older than 10.12: strongly typed networks (the FP16 decision stored in the ONNX) "
            "are unavailable, and its weak-typing FP16 flag is not used by ScopeRT. Upgrade to TensorRT 10.12+ or "
            f"11.x; {NO_TRT_FALLBACK}"
        )


def probe_gpu(trt_version: str, cuda: Any = None) -> GpuInfo:
    """GPU 0's name and compute capability through cuda-python; a clear error without a GPU."""
    if cuda is None:
        from scopert.runtime.backends.cuda_adapter import CudaRuntime

        cuda = CudaRuntime.load()
    name, major, minor = cuda.device_properties(0)
    return GpuInfo(name=name, compute_capability=f"{major}.{minor}", trt_version=trt_version)


# ---- plan --------------------------------------------------------------------------------------------------
def profile_from_tile(card: ModelCard, tile: tuple[int, ...], batch: int) -> ProfileShapes:
    """min/opt/max from the tile plan (``engine_key.tile_profile``): opt = max = (batch, tile), min = batch 1
    and the smallest window the tiler sends, round_up(2*halo + 1, divisor)."""
    return tile_profile(card, tile, batch)


def onnx_precision(onnx_path: Path) -> str:
    """'fp16' when the graph holds FP16 tensors (strongly typed mixed precision), else 'fp32'."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    half = onnx.TensorProto.FLOAT16
    if any(i.data_type == half for i in model.graph.initializer):
        return "fp16"
    if any(n.op_type == "Cast" and any(a.name == "to" and a.i == half for a in n.attribute) for n in model.graph.node):
        return "fp16"
    return "fp32"


def make_plan(onnx_path: str | os.PathLike, tile: tuple[int, ...], batch: int, gpu: GpuInfo,
              out_dir: str | os.PathLike = "engines", workspace_gb: float = DEFAULT_WORKSPACE_GB,
              opt_level: int = DEFAULT_OPT_LEVEL, profiles: int = DEFAULT_PROFILES,
              tf32: bool = False) -> tuple[BuildPlan, ModelCard]:
    from scopert.export.onnx_export import read_card

    path = Path(onnx_path)
    card = read_card(path)
    if not 0 <= int(opt_level) <= 5:
        raise ConfigError(f"--opt-level must be 0..5 (TensorRT's builder optimization level), got {opt_level}.")
    if workspace_gb <= 0:
        raise ConfigError(f"--workspace must be > 0 GiB, got {workspace_gb}.")
    if not 1 <= int(profiles) <= 16:
        raise ConfigError(f"profiles (one per in-flight slot) must be 1..16, got {profiles}.")
    profile = profile_from_tile(card, tuple(int(t) for t in tile), int(batch))
    precision = onnx_precision(path)
    key = EngineKey(sha256_file(path), gpu.name, gpu.compute_capability, gpu.trt_version, precision, profile,
                    tf32=bool(tf32), profiles=int(profiles))
    plan = BuildPlan(path, Path(out_dir), profile, precision, int(workspace_gb * (1 << 30)), int(opt_level), key)
    return plan, card


# ---- build -------------------------------------------------------------------------------------------------
def build_engine(onnx_path: str | os.PathLike, tile: tuple[int, ...], batch: int = 1, *,
                 out_dir: str | os.PathLike = "engines", workspace_gb: float = DEFAULT_WORKSPACE_GB,
                 opt_level: int = DEFAULT_OPT_LEVEL, rebuild: bool = False, trt: Any = None,
                 gpu: GpuInfo | None = None, cuda: Any = None, slots: int = DEFAULT_PROFILES,
                 tf32: bool = False) -> BuildResult:
    """Build (or reuse from the cache) the engine of ``onnx_path`` for ``tile`` and ``batch``.

    ``slots``: how many batches the runtime keeps in flight (one optimization profile each). ``tf32``: allow
    TensorRT's TF32 tensor-core math in FP32 layers (recorded in the card and the engine key)."""
    trt = trt if trt is not None else import_tensorrt()
    version = str(trt.__version__)
    check_strong_typing(version)
    gpu = gpu if gpu is not None else probe_gpu(version, cuda)
    plan, card = make_plan(onnx_path, tile, batch, gpu, out_dir, workspace_gb, opt_level, slots, tf32)
    engine_path = plan.engine_path
    if engine_path.exists() and not rebuild:
        try:
            _, key, _ = read_engine_card(engine_path)
            check_engine(engine_path, gpu)
            if key == plan.key:
                log.info("engine cache hit: %s", engine_path)
                return BuildResult(engine_path, engine_path.with_name(engine_path.name + ".card.json"), key, True,
                                   0.0, plan.timing_cache_path, plan.timing_cache_path.exists())
            log.warning("engine %s has a different key (stale); rebuilding", engine_path.name)
        except (BackendError, InputError, Exception) as exc:  # foreign, corrupt or card-less: rebuild it
            log.warning("engine %s cannot be reused (%s); rebuilding", engine_path.name, exc)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    serialized, cache_reused = _build(trt, plan)
    seconds = time.perf_counter() - t0
    card_path = _write_engine(plan, card, serialized, seconds)
    log.info("built %s in %.1f s (%s, profile %s..%s)", engine_path, seconds, plan.precision, plan.profile.min,
             plan.profile.max)
    return BuildResult(engine_path, card_path, plan.key, False, seconds, plan.timing_cache_path, cache_reused)


def network_flags(trt: Any) -> int:
    """STRONGLY_TYPED on 10.x (opt-in); 0 on 11.x (always strongly typed, the flag is ignored there)."""
    major, _ = trt_version_tuple(trt.__version__)
    if major >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _step_failed(step: str, why: str) -> RunError:
    return RunError(f"TensorRT build step {step} failed for this model ({why}); see the TensorRT log above. "
                    f"{NO_TRT_FALLBACK}")


def _build(trt: Any, plan: BuildPlan) -> tuple[bytes, bool]:
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError:  # pybind11: "factory function returned nullptr" when CUDA cannot initialize
        builder = None
    if builder is None:
        raise BackendError(f"TensorRT could not start its builder (CUDA initialization failed: no usable GPU, or a "
                           f"driver older than this TensorRT needs; `scopert doctor` says which). {NO_TRT_FALLBACK}")
    network = builder.create_network(network_flags(trt))
    if network is None:
        raise _step_failed("create_network", f"flags {network_flags(trt)} refused by TensorRT {trt.__version__}")
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx_path)):
        raise InputError(_parser_errors(parser, plan.onnx_path))
    config = builder.create_builder_config()
    if config is None:
        raise _step_failed("create_builder_config", "no builder config")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    config.builder_optimization_level = plan.opt_level
    _set_tf32(trt, config, plan.key.tf32)
    p = plan.profile
    for k in range(plan.key.profiles):  # one identical profile per concurrent execution context
        profile = builder.create_optimization_profile()
        profile.set_shape(p.input_name, p.min, p.opt, p.max)
        index = config.add_optimization_profile(profile)
        if index is None or int(index) < 0:
            raise _step_failed("add_optimization_profile", f"profile {k} ({p.input_name} min {p.min} opt {p.opt} "
                               f"max {p.max}) is invalid for the network's input")
    cache, reused = _load_timing_cache(config, plan.timing_cache_path)
    if cache is None:
        raise _step_failed("create_timing_cache", "TensorRT returned no timing cache")
    if not config.set_timing_cache(cache, False):
        log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", plan.timing_cache_path)
        cache, reused = config.create_timing_cache(b""), False
        if cache is None or not config.set_timing_cache(cache, False):
            raise _step_failed("set_timing_cache", "even a new, empty timing cache was refused")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RunError(f"TensorRT failed to build {plan.onnx_path.name} (build_serialized_network returned None; see "
                       "the TensorRT log above). Try a smaller --tile or --batch, or a larger --workspace.")
    _save_timing_cache(config, plan.timing_cache_path)
    return bytes(serialized), reused


def _set_tf32(trt: Any, config: Any, allow: bool) -> None:
    """TF32 is on by default in TensorRT; clear it (or set it) explicitly and verify the config took it."""
    flag = trt.BuilderFlag.TF32
    if allow:
        config.set_flag(flag)
    else:
        config.clear_flag(flag)
    if bool(config.get_flag(flag)) != bool(allow):
        raise _step_failed("clear_flag(TF32)" if not allow else "set_flag(TF32)", "the builder config ignored it")


def _parser_errors(parser: Any, onnx_path: Path) -> str:
    names = _node_names(onnx_path)
    lines = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        node = _call(err, "node_name") or ""
        idx = _call(err, "node")
        if not node and isinstance(idx, int) and 0 <= idx < len(names):
            node = names[idx]
        op = _call(err, "node_operator") or ""
        lines.append(f"node {node or '?'} ({op or 'op ?'}): {_call(err, 'desc')}")
    detail = "; ".join(lines) or "no details from the parser"
    return (f"TensorRT cannot parse {onnx_path.name}: {detail}. Replace that operator in the family's export_module "
            f"(or export with another opset); {NO_TRT_FALLBACK}")


def _call(obj: Any, name: str) -> Any:
    fn = getattr(obj, name, None)
    try:
        return fn() if callable(fn) else fn
    except Exception:  # older parsers lack some accessors
        return None


def _node_names(onnx_path: Path) -> list[str]:
    try:
        import onnx

        return [n.name or f"{n.op_type}_{i}" for i, n in enumerate(onnx.load(str(onnx_path)).graph.node)]
    except Exception:
        return []


def _load_timing_cache(config: Any, path: Path) -> tuple[Any, bool]:
    """The persisted cache, or a fresh one when it is missing or unreadable (rebuilt, never an error)."""
    data = b""
    if path.is_file():
        data = path.read_bytes()
    if data:
        try:
            cache = config.create_timing_cache(data)
            if cache is not None:
                return cache, True
            log.warning("timing cache %s is unreadable; starting a new one", path.name)
        except Exception as exc:  # a truncated or foreign cache file
            log.warning("timing cache %s is unreadable (%s); starting a new one", path.name, exc)
    else:
        log.info("no timing cache at %s; a new one is created", path)
    return config.create_timing_cache(b""), False


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(bytes(cache.serialize()))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_engine(plan: BuildPlan, card: ModelCard, serialized: bytes, seconds: float) -> Path:
    """The engine and its sidecar card, both or neither: the card is written first, the engine renamed last."""
    engine_path = plan.engine_path
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    card_path = None
    try:
        tmp.write_bytes(serialized)
        card.verification = dict(card.verification)
        card.verification[CARD_KEY] = {
            "key": plan.key.to_dict(), "digest": plan.key.digest(), "engine_sha256": sha256_file(tmp),
            "build_seconds": round(seconds, 3), "workspace_bytes": plan.workspace_bytes,
            "opt_level": plan.opt_level, "onnx": plan.onnx_path.name, "tf32": plan.key.tf32,
            "profiles": plan.key.profiles,
        }
        card_path = card.write_sidecar(engine_path)
        os.replace(tmp, engine_path)
    except BaseException as exc:  # a full disk, Ctrl-C: no engine without its card, and no temporary
        tmp.unlink(missing_ok=True)
        if card_path is not None:
            card_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write() names no file
            raise OSError(exc.errno, exc.strerror, str(engine_path)) from exc
        raise
    return card_path


# ---- the same build with NVIDIA's tool ----------------------------------------------------------------------
def polygraphy_command(plan: BuildPlan, trt_version: str | None) -> str:
    """The ``polygraphy convert`` command line that builds what ``build_engine`` builds for ``plan``.

    Same network flags (``--strongly-typed`` on 10.x; 11.x is always strongly typed), one ``--trt-*-shapes``
    triple per profile (one per in-flight slot), workspace, optimization level and timing cache; TF32 stays off
    unless the plan allows it (Polygraphy, like ScopeRT, clears TensorRT's TF32 default without ``--tf32``).
    ScopeRT's sidecar card and engine-key checks are not part of it: run an engine built this way with
    ``--backend trt`` only after ``scopert build`` wrote its card."""
    p = plan.profile

    def shape(dims: tuple[int, ...]) -> str:
        return f"{p.input_name}:[{','.join(str(int(d)) for d in dims)}]"

    parts = ["polygraphy", "convert", str(plan.onnx_path), "--convert-to", "trt", "-o", str(plan.engine_path)]
    if trt_version is None or trt_version_tuple(trt_version)[0] < 11:
        parts.append("--strongly-typed")
    for _ in range(plan.key.profiles):
        parts += ["--trt-min-shapes", shape(p.min), "--trt-opt-shapes", shape(p.opt), "--trt-max-shapes", shape(p.max)]
    parts += ["--pool-limit", f"workspace:{plan.workspace_bytes}", "--builder-optimization-level", str(plan.opt_level),
              "--load-timing-cache", str(plan.timing_cache_path), "--save-timing-cache", str(plan.timing_cache_path)]
    if plan.key.tf32:
        parts.append("--tf32")
    return shlex.join(parts)


def show_polygraphy(onnx_path: str | os.PathLike, tile: tuple[int, ...], batch: int = 1, *,
                    out_dir: str | os.PathLike = "engines", workspace_gb: float = DEFAULT_WORKSPACE_GB,
                    opt_level: int = DEFAULT_OPT_LEVEL, slots: int = DEFAULT_PROFILES, tf32: bool = False,
                    trt: Any = None, gpu: GpuInfo | None = None, cuda: Any = None) -> str:
    """``scopert build --show-polygraphy``: the command for this machine's GPU and TensorRT when they are here;
    without them, for an unnamed GPU (the engine and timing-cache names then differ from a real build's)."""
    version = None
    if gpu is None:
        try:
            trt = trt if trt is not None else import_tensorrt()
            version = str(trt.__version__)
            gpu = probe_gpu(version, cuda)
        except BackendError as exc:
            log.info("no TensorRT GPU here (%s); the command names an unknown GPU", str(exc).split(";")[0])
            gpu = GpuInfo("unknown-gpu", "0.0", version or "unknown")
    else:
        version = gpu.trt_version
    plan, _ = make_plan(onnx_path, tile, batch, gpu, out_dir, workspace_gb, opt_level, slots, tf32)
    return polygraphy_command(plan, version if version and version != "unknown" else None)


def describe(result: BuildResult) -> str:
    return json.dumps({"engine": str(result.engine_path), "reused": result.reused, "key": result.key.digest(),
                       "build_seconds": round(result.build_seconds, 2),
                       "timing_cache_reused": result.timing_cache_reused})

