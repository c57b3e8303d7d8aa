"""Which precision a CPU run uses: ``auto`` (the CLI default), ``f32``, ``bf16`` or ``int8``, decided before the
backend is opened, from the model's card, a gate recorded beside the model, or one measured now on real tiles.

``auto`` picks bf16 only when the CPU has bf16 AND the card records a passed bf16 gate (OpenVINO bf16 against
f32 on real tiles: PSNR >= 45 dB; for a segmentation output, the masks' Dice change <= 0.01, the INT8 rule,
measured at ``scopert export``); otherwise f32, and
the reason names what was missing. ``auto`` never picks int8: INT8 changes results more than bf16 and is
only used when asked for. ``f32`` always runs f32. An explicit ``bf16`` or ``int8`` that the CPU or the
card's gate does not allow is refused with a ConfigError (only ``auto`` falls back silently to f32).

The gates live in ``card.precision``:
  ``bf16_gate``: {"psnr_db", "threshold_db", "passed", "tiles", "bf16_ops", "cpu", "measured_at"; a segmentation
                  adds "dice_change" and "mask_threshold", and Dice decides}
  ``int8_gate``: {"metric" ("psnr_db" or "dice_change"), "value", "threshold", "passed", "file" (the
                  quantized OpenVINO IR beside the ONNX), "tiles", "cpu", "measured_at"}

Without a gate in the card, bf16 is earned on this CPU: OpenVINO bf16 against OpenVINO f32 on real tiles
(``measure_bf16``, the same rules) is written beside the model (``<model>.bf16gate.json``), keyed by the model's sha256,
the CPU and the OpenVINO version, and a later run reuses it instead of measuring again.

Imports numpy, the runtime's leaves and planning; OpenVINO only through its backend, lazily. Never torch or onnx.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scopert.checksum import sha256_file
from scopert.errors import ConfigError
from scopert.runtime.compare import dice_change, psnr_db
from scopert.runtime.cpu import CpuCaps, cpu_caps

log = logging.getLogger(__name__)

PRECISION_CHOICES = ("auto", "f32", "bf16", "int8")
BF16_GATE_DB = 45.0
INT8_GATE_DB = 40.0
INT8_GATE_DICE = 0.01
BF16_GATE_DICE = INT8_GATE_DICE  # a segmentation's masks, as the INT8 gate: PSNR of probabilities says little of masks


@dataclass
class PrecisionDecision:
    """The precision a run uses, why, and (for int8) the quantized model file."""

    requested: str
    precision: str  # 'fp32', 'bf16' or 'int8'
    reason: str
    refused: bool = False
    int8_file: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bf16_gate(card: Any) -> dict[str, Any] | None:
    gate = (getattr(card, "precision", None) or {}).get("bf16_gate")
    return gate if isinstance(gate, dict) else None


def int8_gate(card: Any) -> dict[str, Any] | None:
    gate = (getattr(card, "precision", None) or {}).get("int8_gate")
    return gate if isinstance(gate, dict) else None


def bf16_verdict(gate: dict[str, Any], threshold_db: float = BF16_GATE_DB, how: str = "measured"
                 ) -> tuple[bool, str]:
    """Whether a measured bf16 gate (the card's or the one recorded beside the model) passes, and the evidence:
    a segmentation by its masks' Dice change, anything else by PSNR."""
    where = f"{how} on {gate.get('tiles')} real tile(s)"
    psnr = gate.get("psnr_db")
    psnr = float("inf") if psnr is None else float(psnr)
    if not gate.get("bf16_ops"):
        return False, "OpenVINO ran no op in bf16 on this CPU (no bf16 kernels)"
    if gate.get("dice_change") is not None:
        change = float(gate["dice_change"])
        text = (f"Dice change of the masks (> {gate.get('mask_threshold')}) {where} is {change:.4f} "
                f"(segmentation output; PSNR {psnr:.1f} dB)")
        return change <= BF16_GATE_DICE, f"{text} {'<=' if change <= BF16_GATE_DICE else 'above'} {BF16_GATE_DICE:g}"
    if psnr < threshold_db:
        return False, f"PSNR(bf16 vs f32) {where} is {psnr:.1f} dB, below the {threshold_db:g} dB gate"
    return True, f"PSNR(bf16 vs f32) {where} is {psnr:.1f} dB >= {threshold_db:g} dB"


def _bf16_passed(gate: dict[str, Any] | None, threshold_db: float) -> tuple[bool, str]:
    if gate is None:
        return False, ("the card records no bf16 gate (`scopert apply`/`stream` measure it on the first tiles of "
                       "their input and record it beside the model; or `scopert export RUN -o M.onnx --calib FILE`)")
    passed, why = bf16_verdict(gate, threshold_db)
    return passed, f"the card's bf16 gate {'passed' if passed else 'failed'}: {why}"


def decide(requested: str, card: Any, cpu_bf16: bool, cpu_evidence: str = "", model_path: str | Path | None = None,
           threshold_db: float = BF16_GATE_DB) -> PrecisionDecision:
    """The precision for ``requested`` given the card's gates and whether the CPU has bf16 (never raises;
    ``refused`` marks an explicit request that cannot be honoured)."""
    if requested in ("f32", "fp32"):
        return PrecisionDecision(requested, "fp32", "f32 forced by --precision f32")
    if requested not in PRECISION_CHOICES:
        return PrecisionDecision(requested, "fp32", f"unknown precision {requested!r}; choose one of "
                                 f"{', '.join(PRECISION_CHOICES)}", refused=True)
    if requested == "int8":
        gate = int8_gate(card)
        if gate is None:
            return PrecisionDecision(requested, "fp32", "the card records no INT8 gate; quantize and gate "
                                     "it on real tiles with `scopert export RUN -o M.onnx --cpu-gates --int8 --calib "
                                     "FILE` (needs `pip install 'scopert[int8]'`)", refused=True)
        file = Path(model_path).with_name(gate["file"]) if model_path and gate.get("file") else None
        if not gate.get("passed"):
            return PrecisionDecision(requested, "fp32", f"the card's INT8 gate failed "
                                     f"({gate.get('metric')} {gate.get('value')} vs {gate.get('threshold')}); use f32 "
                                     "or bf16", refused=True)
        if file is None or not file.is_file():
            return PrecisionDecision(requested, "fp32", f"the quantized model {file} is missing; "
                                     "re-run `scopert export ... --cpu-gates --int8`", refused=True)
        return PrecisionDecision(requested, "int8", f"int8: the card's INT8 gate passed ({gate.get('metric')} "
                                 f"{gate.get('value')} vs {gate.get('threshold')}) on {gate.get('tiles')} real tile(s)",
                                 int8_file=str(file))
    passed, why = _bf16_passed(bf16_gate(card), threshold_db)
    if not cpu_bf16:
        return PrecisionDecision(requested, "fp32", f"{requested}: this CPU has no bf16 ({cpu_evidence or 'no flag'}); "
                                 "running f32", refused=requested == "bf16")
    if not passed:
        return PrecisionDecision(requested, "fp32", f"{requested}: {why}; running f32", refused=requested == "bf16")
    return PrecisionDecision(requested, "bf16", f"{requested}: bf16 because the CPU has it ({cpu_evidence}) and {why}")


# ---- the bf16 gate measured on this CPU, recorded beside the model ---------------------------------------
def gate_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + ".bf16gate.json")


@dataclass
class GateResult:
    """The precision a run uses and why."""

    precision: str  # 'fp32' or 'bf16'
    reason: str
    psnr_db: float | None = None
    threshold_db: float = BF16_GATE_DB
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


def measure_bf16(model_path: str | Path, tiles: Sequence[np.ndarray], threads: int | None = None,
                 mask_threshold: float | None = None) -> dict[str, Any]:
    """OpenVINO bf16 against OpenVINO f32 over ``tiles`` (model-layout batches): the PSNR, for a segmentation
    (``mask_threshold``) the Dice change of the masks, and the op counts per runtime precision of the bf16 compile
    (proof that bf16 kernels really ran)."""
    from scopert.runtime.backends.openvino import OpenVinoBackend

    f32 = OpenVinoBackend(model_path, threads=threads, precision="f32")
    bf16 = OpenVinoBackend(model_path, threads=threads, precision="bf16")
    ref = np.concatenate([f32.run(tile).ravel() for tile in tiles])
    got = np.concatenate([bf16.run(tile).ravel() for tile in tiles])
    counts = bf16.runtime_precisions((1,) + tuple(np.asarray(tiles[0]).shape[1:]))
    psnr = psnr_db(ref, got)
    gate = {"psnr_db": round(float(psnr), 2) if np.isfinite(psnr) else None, "identical": not np.isfinite(psnr),
            "tiles": len(tiles), "tile_shape": list(np.asarray(tiles[0]).shape), "bf16_ops": counts.get("bf16", 0),
            "runtime_precisions": counts}
    if mask_threshold is not None:
        gate.update(dice_change=round(dice_change(ref, got, mask_threshold), 5), mask_threshold=mask_threshold)
    return gate


def decide_precision(model_path: str | Path, requested: str = "f32", tiles: Sequence[np.ndarray] | None = None,
                     threshold_db: float = BF16_GATE_DB, threads: int | None = None,
                     caps: CpuCaps | None = None, mask_threshold: float | None = None) -> GateResult:
    """Decide between f32 and bf16 for ``model_path`` on this CPU; never raises for a refusal.
    ``mask_threshold``: the card's, when its output is a segmentation (the gate then judges the masks)."""
    if requested in ("f32", "fp32"):
        return GateResult("fp32", "f32 requested (the default)", threshold_db=threshold_db)
    if requested != "bf16":
        raise ConfigError(f"precision {requested!r}; choose f32 (default) or bf16.")
    caps = caps or cpu_caps()
    if not caps.bf16:
        return GateResult("fp32", f"bf16 refused: this CPU ({caps.model}) does not report bf16 "
                          f"({caps.bf16_evidence}); running in f32", threshold_db=threshold_db)
    path = gate_path(model_path)
    key = f"{sha256_file(model_path)}|{caps.key}|{_engine_version()}"
    record = _read_records(path).get(key)
    if record is not None and mask_threshold is not None and record.get("dice_change") is None:
        record = None  # recorded before segmentations were judged by their masks: measure again
    reused = record is not None
    if record is None:
        if not tiles:
            return GateResult("fp32", "bf16 refused: no accuracy gate has been measured for this model on this CPU; "
                              "give real data to measure it (`scopert bench MODEL --precision bf16 --data FILE`, or "
                              "load(..., precision='bf16', calibration=array)); running in f32",
                              threshold_db=threshold_db, record=str(path))
        record = dict(measure_bf16(model_path, tiles, threads, mask_threshold), cpu=caps.key,
                      measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        try:
            _write_record(path, key, record)
        except OSError as exc:
            log.warning("could not record the bf16 gate beside the model (%s): %s", path, exc)
    passed, why = bf16_verdict(record, threshold_db, "recorded" if reused else "measured")
    psnr = float("inf") if record.get("psnr_db") is None else float(record["psnr_db"])
    if not passed:
        return GateResult("fp32", f"bf16 refused: {why}; running in f32", psnr_db=psnr, threshold_db=threshold_db,
                          reused=reused, record=str(path))
    return GateResult("bf16", f"bf16 earned: {why} on {caps.model} ({caps.bf16_evidence})", psnr_db=psnr,
                      threshold_db=threshold_db, reused=reused, record=str(path))


def _engine_version() -> str:
    """The OpenVINO that measured a gate: another version may run other bf16 kernels, so it measures again."""
    try:
        import openvino

        return f"openvino {openvino.__version__}"
    except ImportError:
        return "openvino missing"
