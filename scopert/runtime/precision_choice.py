"""Which precision a CPU run uses, from what the model's card records: ``auto`` (the CLI default), ``f32``,
``bf16`` or ``int8``.

``auto`` picks bf16 only when the CPU has bf16 AND the card records a passed bf16 gate (PSNR of OpenVINO
bf16 against f32 on real tiles >= 45 dB, measured at ``scopert export --cpu-gates``); otherwise f32, and
the reason names what was missing. ``auto`` never picks int8: INT8 changes results more than bf16 and is
only used when asked for. ``f32`` always runs f32. An explicit ``bf16`` or ``int8`` that the CPU or the
card's gate does not allow is refused with a ConfigError (only ``auto`` falls back silently to f32).

The gates live in ``card.precision``:
  ``bf16_gate``: {"psnr_db", "threshold_db", "passed", "tiles", "bf16_ops", "cpu", "measured_at"}
  ``int8_gate``: {"metric" ("psnr_db" or "dice_change"), "value", "threshold", "passed", "file" (the
                  quantized OpenVINO IR beside the ONNX), "tiles", "cpu", "measured_at"}

Imports the standard library only. Never torch or onnx.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PRECISION_CHOICES = ("auto", "f32", "bf16", "int8")
BF16_GATE_DB = 45.0
INT8_GATE_DB = 40.0
INT8_GATE_DICE = 0.01


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


def _bf16_passed(gate: dict[str, Any] | None, threshold_db: float) -> tuple[bool, str]:
    if gate is None:
        return False, ("the card records no bf16 gate (`scopert apply`/`stream` measure it on the first tiles of "
                       "their input and record it beside the model; or `scopert export RUN -o M.onnx --calib FILE`)")
    if not gate.get("bf16_ops"):
        return False, "the card's bf16 gate found no op running in bf16"
    psnr = gate.get("psnr_db")
    psnr = float("inf") if psnr is None else float(psnr)
    if psnr < threshold_db:
        return False, f"the card's bf16 gate measured {psnr:.1f} dB on {gate.get('tiles')} real tile(s), below {threshold_db:g} dB"
    return True, f"the card's bf16 gate passed: {psnr:.1f} dB >= {threshold_db:g} dB on {gate.get('tiles')} real tile(s)"


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
