"""The selection layer: which engine runs a model, at which precision, decided once and opened once.

``select`` takes the card and its ``Planner`` (read and made once by ``load``) and returns one opened backend
with its precision decided: the ordered ``auto`` choice (``choice``), the precision (``precision``: the card's
gates, a gate recorded beside the model, or one measured now on real tiles), and for an f32 run on the CPU the
measured engine choice (``measured``). Nothing is swapped afterwards. Engines are imported from here and from
nowhere above; engines never import this layer.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scopert.errors import BackendError, ConfigError, ScopertError
from scopert.runtime.backends.base import AUTO, REGISTRY, Backend, backend_choices, by_priority
from scopert.runtime.cpu import CpuCaps, cpu_caps
from scopert.runtime.selection import precision as pc
from scopert.runtime.selection.choice import Choice, Environment, choose

log = logging.getLogger(__name__)


@dataclass
class Selected:
    backend: Backend
    precision: pc.GateResult | None  # None: f32 by the library's default, nothing decided


def open_backend(path: str | Path, backend: str = AUTO, device: str = "auto", threads: int | None = None,
                 planner: Any = None, env: Environment | None = None) -> Backend:
    """Open ``path`` with the named backend (f32), or with the ``auto`` choice (measured on the CPU when a
    ``planner`` gives the tile to measure on); the choice and why are in its ``info`` and the log."""
    if backend != AUTO and backend not in REGISTRY:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(backend_choices())}.")
    choice = choose(path, device, env) if backend == AUTO else None
    return _open_f32(choice, backend, Path(path), device, threads, planner)


def open_named(name: str, path: Path, device: str = "auto", threads: int | None = None) -> Backend:
    """``--backend NAME``: its registry entry's opener; an engine that cannot run an op of the model falls back
    to the entry's ``fallback`` engine with a warning that names the ops."""
    entry = REGISTRY[name]
    try:
        return entry.load_opener()(path, device=device, threads=threads)
    except BackendError as exc:
        ops = getattr(exc, "ops", None)
        if ops is None or not entry.fallback:
            raise
        fallback = REGISTRY[entry.fallback].load_opener()(path, device="cpu", threads=threads)
        names = ", ".join(ops) or "unnamed ops"
        log.warning("%s cannot run %s (ops: %s); falling back to %s on the CPU", entry.name, path.name, names,
                    entry.fallback)
        fallback.info.reason = f"{fallback.info.reason}; fallback: {entry.name} cannot run {names}"
        return fallback


def open_choice(choice: Choice, path: Path, threads: int | None, planner: Any = None) -> Backend:
    """Open what ``choose`` picked, f32: on the CPU the measured faster engine where OpenVINO is the pick."""
    from scopert.runtime.selection.measured import open_measured

    backend = None
    if choice.backend == "openvino" and planner is not None:
        backend = open_measured(path, planner, threads, choice.reason)
    if backend is None:
        target = choice.engine_path or path
        backend = open_named(choice.backend, Path(target), choice.device, threads)
        backend.info.reason = f"{backend.info.reason}; chosen because: {choice.reason}"
    log.info("backend auto: %s on %s, precision %s (%s)", backend.info.name, backend.info.device,
             backend.info.precision, backend.info.reason)
    return backend


def select(path: Path, card: Any, planner: Any, backend: str = AUTO, device: str = "auto",
           threads: int | None = None, precision: str = "f32",
           calibration: np.ndarray | Callable[[], np.ndarray] | None = None,
           threshold_db: float = pc.BF16_GATE_DB, caps: CpuCaps | None = None,
           env: Environment | None = None) -> Selected:
    """The one backend a run uses, opened at the precision decided for it (see the module doc)."""
    if backend != AUTO and backend not in REGISTRY:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(backend_choices())}.")
    choice = choose(path, device, env) if backend == AUTO else None
    if precision == "f32":  # the library's default: nothing to decide
        return Selected(_open_f32(choice, backend, path, device, threads, planner), None)
    if precision == "fp32":
        decision = pc.PrecisionDecision(precision, "fp32", "f32 forced by --precision f32")
    else:
        engine = (None if choice.device == "cpu" else choice.backend) if choice else backend
        decision = decide_run_precision(precision, card, path, engine, planner, calibration, threshold_db, threads,
                                        caps or cpu_caps())
    gate = pc.GateResult(decision.precision, decision.reason, threshold_db=threshold_db)
    if decision.precision in ("bf16", "int8"):  # the CPU engine the registry says runs it, opened at it
        entry = engine_for(decision.precision)
        opener = entry.load_opener()
        if decision.precision == "bf16":
            opened = opener(path, device="cpu", threads=threads, precision="bf16")
        else:
            opened = opener(Path(decision.int8_file), device="cpu", threads=threads)
            opened.info.precision = "int8"
            opened.info.reason += f"; INT8 model {Path(decision.int8_file).name}"
        if choice:
            log.info("backend auto: %s on cpu, precision %s (%s)", entry.name, opened.info.precision,
                     opened.info.reason)
    else:
        opened = _open_f32(choice, backend, path, device, threads, planner)
    log.info("precision %s for %s (%s requested): %s", gate.precision, path.name, precision, gate.reason)
    opened.info.reason = f"{opened.info.reason}; precision {gate.precision}: {gate.reason}"
    return Selected(opened, gate)


def engine_for(precision: str) -> Any:
    """The registered CPU engine that runs ``precision`` (bf16, int8), first in ``auto``'s order."""
    for entry, _ in by_priority("cpu"):
        if precision in entry.precisions:
            return entry
    raise ConfigError(f"no registered engine runs {precision} on the CPU; use --precision f32.")


def _open_f32(choice: Choice | None, backend: str, path: Path, device: str, threads: int | None,
              planner: Any) -> Backend:
    return open_choice(choice, path, threads, planner) if choice else open_named(backend, path, device, threads)


def decide_run_precision(requested: str, card: Any, path: Path, engine: str | None, planner: Any,
                         calibration: np.ndarray | Callable[[], np.ndarray] | None, threshold_db: float,
                         threads: int | None,
                         caps: CpuCaps) -> pc.PrecisionDecision:
    """``auto``/``bf16``/``int8`` for this run, before anything is opened. ``engine``: the engine the user named
    (or a GPU engine ``auto`` picked); None when ``auto`` runs on the CPU. An explicit request that cannot be
    honoured raises ConfigError naming why; ``auto`` falls back to f32 and says why."""
    wanted = "bf16" if requested == "auto" else requested
    able = [e for e in REGISTRY.values() if wanted in e.precisions and "cpu" in e.devices]
    if engine is None and not any(e.probe and importlib.util.find_spec(e.probe) for e in able):
        why = f"{wanted} needs {' or '.join(e.title for e in able)}, which is not installed"
        if requested != "auto":
            raise ConfigError(f"--precision {requested} refused: {why} (`pip install 'scopert[cpu]'`).")
        return pc.PrecisionDecision(requested, "fp32", f"auto: f32 ({why})")
    if engine is not None and wanted not in REGISTRY[engine].precisions:
        why = (f"{requested} runs on the {' or '.join(e.title for e in able)} backend only, and --backend {engine} "
               f"was asked for; use --backend auto or {' or '.join(e.name for e in able)} (x86)")
        if requested != "auto":
            raise ConfigError(f"--precision {requested} refused: {why}.")
        return pc.PrecisionDecision(requested, "fp32", f"auto: f32 ({why})")
    decision = pc.decide(requested, card, caps.bf16, caps.bf16_evidence, path, threshold_db)
    if requested in ("bf16", "auto") and decision.precision != "bf16" and caps.bf16 and pc.bf16_gate(card) is None:
        # no gate in the card: the gate recorded beside the model for this CPU and engine, or one measured now on
        # the run's own real tiles (the same threshold); auto uses bf16 only when it passed
        try:
            data = calibration() if callable(calibration) else calibration
            tiles = planner.sample_tiles(data) if data is not None else None
        except ScopertError as exc:  # data the run itself will refuse, with its own message
            if requested == "bf16":
                raise
            log.debug("no gate tiles from the calibration data: %s", exc)
            tiles = None
        if requested == "bf16" or tiles is not None or pc.gate_path(path).exists():
            measured = pc.decide_precision(path, "bf16", tiles, threshold_db, threads, caps, card.mask_threshold())
            decision = pc.PrecisionDecision(requested, measured.precision, f"{requested}: {measured.reason}",
                                            refused=requested == "bf16" and measured.precision != "bf16")
    if decision.refused:
        raise ConfigError(f"--precision {requested} refused: {decision.reason}. Use --precision auto (falls back "
                          "to f32) or f32.")
    return decision
