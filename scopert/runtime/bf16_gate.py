"""bf16 as an earned opt-in: the CPU must report bf16, and a measured accuracy gate must pass.

``cpu_caps`` reads the CPU model and flags from /proc/cpuinfo (avx512_bf16, amx_bf16) and, when OpenVINO
is installed, its OPTIMIZATION_CAPABILITIES ('BF16'). ``decide_precision`` turns a request for bf16 into
a decision: refused (and the run goes on in f32) when the CPU lacks bf16, when no real tiles and no
earlier measurement exist, or when the PSNR of bf16 against f32 on real tiles is below the threshold
(45 dB by default). The measured value is written beside the model (``<model>.bf16gate.json``), keyed by
the model's sha256 and the CPU, and a later run reuses it instead of measuring again.

Imports numpy and the standard library; OpenVINO only through the backend, lazily. Never torch or onnx.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scopert.errors import ScopertError
from scopert.checksum import sha256_file
from scopert.runtime.layout import centre_frame_model, resolve_data_axes
from scopert.runtime.model import tile_input
from scopert.runtime.normalize import AppliedNormalization

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD_DB = 45.0
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CpuCaps:
    """What the CPU reports about itself."""

    model: str
    flags: frozenset[str] = field(default_factory=frozenset)
    ov_capabilities: tuple[str, ...] = ()

    @property
    def bf16(self) -> bool:
        return any(f in self.flags for f in BF16_FLAGS) or "BF16" in self.ov_capabilities

    @property
    def bf16_evidence(self) -> str:
        found = [f for f in BF16_FLAGS if f in self.flags]
        if "BF16" in self.ov_capabilities:
            found.append("OpenVINO BF16 capability")
        return ", ".join(found) if found else "no avx512_bf16/amx_bf16 flag and no OpenVINO BF16 capability"

    @property
    def key(self) -> str:
        """Identifies the CPU for the gate record: model name plus its vector/bf16 flags."""
        vec = sorted(f for f in self.flags if f.startswith(("avx", "amx")))
        return f"{self.model} [{' '.join(vec)}]"


def cpu_caps(cpuinfo: str | Path = "/proc/cpuinfo", ask_openvino: bool = True) -> CpuCaps:
    """The CPU's model name and flags (Linux /proc/cpuinfo) and OpenVINO's view of it, where available."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    caps: tuple[str, ...] = ()
    if ask_openvino:
        try:
            import openvino as ov

            caps = tuple(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        except Exception:  # noqa: BLE001 - not installed or no CPU plugin: the flags alone decide
            caps = ()
    return CpuCaps(model=model, flags=flags, ov_capabilities=caps)


def psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR of ``test`` against ``reference`` over the reference's value range (inf when identical)."""
    reference = np.asarray(reference, np.float64)
    test = np.asarray(test, np.float64)
    mse = float(np.mean((reference - test) ** 2))
    rng = float(reference.max() - reference.min()) or 1.0
    return float("inf") if mse == 0 else 10.0 * np.log10(rng * rng / mse)


def gate_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + ".bf16gate.json")


@dataclass
class GateResult:
    """The precision a run uses and why."""

    precision: str  # 'fp32' or 'bf16'
    reason: str
    psnr_db: float | None = None
    threshold_db: float = DEFAULT_THRESHOLD_DB
    reused: bool = False
    record: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_records(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data.get("records", {}) if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_record(path: Path, key: str, record: dict[str, Any]) -> None:
    records = _read_records(path)
    records[key] = record
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"records": records}, indent=2))
    os.replace(tmp, path)


def measure_bf16_psnr(model_path: str | Path, tiles: Sequence[np.ndarray], threads: int | None = None
                      ) -> tuple[float, dict[str, int]]:
    """PSNR of OpenVINO bf16 against OpenVINO f32 over ``tiles`` (model-layout batches), and the op
    counts per runtime precision of the bf16 compile (proof that bf16 kernels really ran)."""
    from scopert.runtime.backends.openvino import OpenVinoBackend

    f32 = OpenVinoBackend(model_path, threads=threads, precision="f32")
    bf16 = OpenVinoBackend(model_path, threads=threads, precision="bf16")
    ref, got = [], []
    for tile in tiles:
        ref.append(f32.run(tile).ravel())
        got.append(bf16.run(tile).ravel())
    counts = bf16.runtime_precisions((1,) + tuple(np.asarray(tiles[0]).shape[1:]))
    return psnr_db(np.concatenate(ref), np.concatenate(got)), counts


def decide_precision(model_path: str | Path, requested: str = "f32", tiles: Sequence[np.ndarray] | None = None,
                     threshold_db: float = DEFAULT_THRESHOLD_DB, threads: int | None = None,
                     caps: CpuCaps | None = None) -> GateResult:
    """Decide between f32 and bf16 for ``model_path`` on this CPU; never raises for a refusal."""
    if requested in ("f32", "fp32"):
        return GateResult("fp32", "f32 requested (the default)", threshold_db=threshold_db)
    if requested != "bf16":
        from scopert.errors import ConfigError

        raise ConfigError(f"precision {requested!r}; choose f32 (default) or bf16.")
    caps = caps or cpu_caps()
    if not caps.bf16:
        return GateResult("fp32", f"bf16 refused: this CPU ({caps.model}) does not report bf16 "
                          f"({caps.bf16_evidence}); running in f32", threshold_db=threshold_db)
    path = gate_path(model_path)
    key = f"{sha256_file(model_path)}|{caps.key}|{_engine_version()}"
    record = _read_records(path).get(key)
    reused = record is not None
    if record is None:
        if not tiles:
            return GateResult("fp32", "bf16 refused: no accuracy gate has been measured for this model on this CPU; "
                              "give real data to measure it (`scopert bench MODEL --precision bf16 --data FILE`, or "
                              "load(..., precision='bf16', calibration=array)); running in f32",
                              threshold_db=threshold_db, record=str(path))
        psnr, counts = measure_bf16_psnr(model_path, tiles, threads)
        record = {"psnr_db": psnr if np.isfinite(psnr) else None, "identical": not np.isfinite(psnr),
                  "tiles": len(tiles), "tile_shape": list(np.asarray(tiles[0]).shape), "bf16_ops": counts.get("bf16", 0),
                  "runtime_precisions": counts, "cpu": caps.key, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        try:
            _write_record(path, key, record)
        except OSError as exc:
            log.warning("could not record the bf16 gate beside the model (%s): %s", path, exc)
    if not record.get("bf16_ops"):
        return GateResult("fp32", "bf16 refused: OpenVINO ran no op in bf16 on this CPU (no bf16 kernels); "
                          "running in f32", record=str(path), reused=reused, threshold_db=threshold_db)
    psnr = float("inf") if record.get("psnr_db") is None else float(record["psnr_db"])
    where = "recorded" if reused else "measured"
    if psnr < threshold_db:
        return GateResult("fp32", f"bf16 refused: PSNR(bf16 vs f32) {where} on {record['tiles']} real tile(s) is "
                          f"{psnr:.1f} dB, below the {threshold_db:g} dB gate; running in f32",
                          psnr_db=psnr, threshold_db=threshold_db, reused=reused, record=str(path))
    return GateResult("bf16", f"bf16 earned: PSNR(bf16 vs f32) {where} on {record['tiles']} real tile(s) is "
                      f"{psnr:.1f} dB >= {threshold_db:g} dB on {caps.model} ({caps.bf16_evidence})",
                      psnr_db=psnr, threshold_db=threshold_db, reused=reused, record=str(path))


def _engine_version() -> str:
    """The OpenVINO that measured a gate: another version may run other bf16 kernels, so it measures again."""
    try:
        import openvino

        return f"openvino {openvino.__version__}"
    except ImportError:
        return "openvino missing"


def sample_tiles(model: Any, array: np.ndarray, n: int = 4, tile=None, axes: str | None = None) -> list[np.ndarray]:
    """Up to ``n`` normalized, model-layout tiles (1, C, ...) of a real ``array``, spread over it (for a model
    that restores the centre frame of a window: tiles of windows spread over the movie)."""
    if centre_frame_model(model.card):
        return _window_tiles(model, array, n, tile, axes)
    internal, data_axes, norm = model.prepare(array, axes)
    rp = model.plan_for(internal, data_axes, tile, None, "auto", 1)  # a stack under a 2D model: planes are tiles
    tiles = list(rp.plan)
    pick = [tiles[int(i)] for i in np.linspace(0, len(tiles) - 1, min(n, len(tiles)))]
    return [rp.in_layout.to_model(tile_input(internal, norm, rp.plan, t)[None]).astype(np.float32) for t in pick]


def _window_tiles(model: Any, array: np.ndarray, n: int, tile, axes: str | None) -> list[np.ndarray]:
    data_axes = resolve_data_axes(array, model.card, axes)
    movie = np.transpose(array, [data_axes.index(a) for a in "t" + model.in_layout.tiled])
    out = []
    for i in np.linspace(0, movie.shape[0] - 1, min(n, movie.shape[0])).astype(int):
        window = model._normalize_frames(movie[model.frame_window(movie.shape[0], int(i))])
        rp = model.make_plan(dict(zip(model.in_layout.tiled, window.shape[1:])), tile, None, "auto", 1)
        first = next(iter(rp.plan))
        out.append(rp.in_layout.to_model(tile_input(window, AppliedNormalization(0.0, 1.0), rp.plan, first)[None])
                   .astype(np.float32))
    return out


def _explicit_engine(model: Any) -> str | None:
    """The engine the user named (``--backend ort``), or None when ``auto`` picked it (measured or ordered)."""
    if (getattr(model.backend, "measured_choice", None) is not None or getattr(model.backend, "measure_pending", False)
            or "chosen because" in model.backend.info.reason):
        return None
    return model.backend.info.name


def _swap_backend(model: Any, backend: Any) -> None:
    """Give ``model`` another backend and close the one it had (its sessions and threads)."""
    old, model.backend = model.backend, backend
    if old is not backend:
        old.close()


def apply_precision(model: Any, precision: str, calibration: np.ndarray | None = None,
                    threshold_db: float = DEFAULT_THRESHOLD_DB, threads: int | None = None,
                    caps: CpuCaps | None = None) -> GateResult:
    """Give a loaded ``Model`` the precision it may use (``auto``, ``f32``, ``bf16`` or ``int8``).

    ``auto`` takes bf16 when the CPU has it and the card records a passed bf16 gate, else f32, and never
    fails. An explicit ``bf16`` is allowed by the card's gate, or by a gate measured now on ``calibration``
    (or recorded beside the model); an explicit ``bf16``/``int8`` that cannot be honoured raises ConfigError
    naming why. Swaps in the OpenVINO backend that runs the chosen precision; the decision is kept as
    ``model.precision_decision`` and appended to ``model.backend.info.reason``."""
    from scopert.errors import ConfigError
    from scopert.runtime import precision_choice as pc

    if precision in ("f32", "fp32"):
        gate = GateResult("fp32", "f32 forced by --precision f32", threshold_db=threshold_db)
    else:
        caps = caps or cpu_caps()
        engine = _explicit_engine(model) if model.backend.info.device == "cpu" else model.backend.info.name
        if engine not in (None, "openvino"):
            why = (f"{precision} runs on the OpenVINO backend only, and --backend {engine} was asked for; use "
                   "--backend auto or openvino (x86)")
            if precision != "auto":
                raise ConfigError(f"--precision {precision} refused: {why}.")
            decision = pc.PrecisionDecision(precision, "fp32", f"auto: f32 ({why})")
        else:
            decision = pc.decide(precision, model.card, caps.bf16, caps.bf16_evidence, model.path, threshold_db)
        if precision in ("bf16", "auto") and decision.precision != "bf16" and caps.bf16 \
                and pc.bf16_gate(model.card) is None and engine in (None, "openvino"):
            # no gate in the card: the gate recorded beside the model for this CPU and engine, or one measured now on
            # the run's own real tiles (the same threshold); auto uses bf16 only when it passed
            try:
                tiles = sample_tiles(model, calibration) if calibration is not None else None
            except ScopertError as exc:  # data the run itself will refuse, with its own message
                if precision == "bf16":
                    raise
                log.debug("no gate tiles from the calibration data: %s", exc)
                tiles = None
            if precision == "bf16" or tiles is not None or gate_path(model.path).exists():
                measured = decide_precision(model.path, "bf16", tiles, threshold_db, threads, caps)
                decision = pc.PrecisionDecision(precision, measured.precision, f"{precision}: {measured.reason}",
                                                refused=precision == "bf16" and measured.precision != "bf16")
        if decision.refused:
            raise ConfigError(f"--precision {precision} refused: {decision.reason}. Use --precision auto (falls back "
                              "to f32) or f32.")
        gate = GateResult(decision.precision, decision.reason, threshold_db=threshold_db)
        if decision.precision in ("bf16", "int8"):
            from scopert.runtime.backends.openvino import OpenVinoBackend

            if decision.precision == "bf16":
                _swap_backend(model, OpenVinoBackend(model.path, threads=threads, precision="bf16"))
            else:
                _swap_backend(model, OpenVinoBackend(decision.int8_file, threads=threads, precision="f32"))
                model.backend.info.precision = "int8"
                model.backend.info.reason += f"; INT8 model {Path(decision.int8_file).name}"
    if getattr(model.backend, "measure_pending", False):  # f32 after all: the measured CPU choice decides
        from scopert.runtime.backends.choice import open_openvino
        from scopert.runtime.backends.measured import open_measured

        why = "f32 after the precision choice"
        _swap_backend(model, open_measured(model.path, threads, why, ort_backend=model.backend)
                      or open_openvino(model.path, threads, "f32", why))
    log.info("precision %s for %s (%s requested): %s", gate.precision, model.path.name, precision, gate.reason)
    model.backend.info.reason = f"{model.backend.info.reason}; precision {gate.precision}: {gate.reason}"
    model.precision_decision = gate
    return gate
