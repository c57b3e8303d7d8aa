"""CPU precision gates recorded in the card at export: bf16 (OpenVINO bf16 vs f32) and INT8 (NNCF
post-training quantization of the OpenVINO model, calibrated on real tiles).

Both are measured on real tiles (``--calib`` files, else the run's training data) and written into the
ONNX file's card (``card.precision['bf16_gate']`` / ``['int8_gate']``), where the runtime's precision
choice (``scopert.runtime.selection.precision``) reads them.

INT8 gate, and why these thresholds:
- restoration models: PSNR(INT8 vs f32) >= 40 dB over the f32 output's range. At 40 dB the RMS change
  is 1 % of the output range, below the noise of the restorations these nets make (a denoised W2S frame
  is ~30 dB from its 400-frame average), yet it rejects the 8-bit clipping seen in cpu-engines.md section 4.
- segmentation models (card.postprocess names a threshold or the family segments): the masks of INT8 and
  f32 output, each thresholded, may differ by at most 0.01 in Dice (1 - Dice(f32 mask, int8 mask) <= 0.01).
The gate is judged on tiles NOT used for calibration when there are enough (half calibrate, all judge).

NNCF is an optional extra (``pip install 'scopert[int8]'``); without it INT8 is refused with that advice.
This module is export-side: it may import onnx (to rewrite the card), never torch.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scopert.errors import ConfigError
from scopert.runtime.compare import dice_change, psnr_db
from scopert.runtime.selection.precision import BF16_GATE_DB, INT8_GATE_DB, INT8_GATE_DICE

log = logging.getLogger(__name__)

INT8_SUFFIX = ".int8.xml"


@dataclass
class Int8Result:
    path: Path
    gate: dict[str, Any]


def _run_all(path: str | Path, tiles: Sequence[np.ndarray], precision: str = "f32") -> list[np.ndarray]:
    from scopert.runtime.backends.openvino import OpenVinoBackend

    backend = OpenVinoBackend(path, precision=precision)
    return [backend.run(t) for t in tiles]


def quantize_int8(onnx_path: str | Path, tiles: np.ndarray, card: Any, out_path: str | Path | None = None,
                  threshold_db: float = INT8_GATE_DB, max_dice_change: float = INT8_GATE_DICE) -> Int8Result:
    """Quantize ``onnx_path`` with NNCF on ``tiles`` (N, ...) and gate INT8 against f32 on them."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        raise ConfigError("INT8 needs NNCF: `pip install 'scopert[int8]'` (or `pip install nncf`).") from None
    onnx_path = Path(onnx_path)
    out_path = Path(out_path) if out_path else onnx_path.with_name(onnx_path.stem + INT8_SUFFIX)
    batches = [tiles[i:i + 1] for i in range(len(tiles))]
    calib = batches[: max(1, len(batches) // 2)] if len(batches) >= 4 else batches
    model = ov.Core().read_model(str(onnx_path))
    model.reshape({model.inputs[0]: ov.PartialShape(list(batches[0].shape))})
    t0 = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib))
    seconds = time.perf_counter() - t0
    tmp = out_path.with_name(out_path.name + f".tmp{os.getpid()}.xml")
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    os.replace(tmp, out_path)
    os.replace(tmp.with_suffix(".bin"), out_path.with_suffix(".bin"))
    ref = np.concatenate([o.ravel() for o in _run_all(onnx_path, batches)])
    got = np.concatenate([o.ravel() for o in _run_all(out_path, batches)])
    thr = card.mask_threshold()
    if thr is not None:
        value, threshold, metric = dice_change(ref, got, thr), max_dice_change, "dice_change"
        passed = value <= threshold
    else:
        value, threshold, metric = psnr_db(ref, got), threshold_db, "psnr_db"
        passed = value >= threshold
    gate = {"metric": metric, "value": round(float(value), 4) if np.isfinite(value) else None,
            "threshold": threshold, "passed": bool(passed), "file": out_path.name, "tiles": len(batches),
            "calibration_tiles": len(calib), "judged_on": "all tiles (half of them not seen by calibration)"
            if len(batches) >= 4 else "the calibration tiles", "tile_shape": list(batches[0].shape),
            "quantize_seconds": round(seconds, 1), "nncf": nncf.__version__, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    log.info("INT8 gate for %s: %s %s vs %s -> %s", onnx_path.name, metric, gate["value"], threshold,
             "passed" if passed else "failed")
    return Int8Result(out_path, gate)


def bf16_gate_record(onnx_path: str | Path, tiles: np.ndarray, card: Any, threshold_db: float = BF16_GATE_DB
                     ) -> dict[str, Any]:
    """OpenVINO bf16 against f32 on real ``tiles``, as the card records it (or why it was not measured): PSNR, and
    for a segmentation output the Dice change of its masks, which then decides."""
    from scopert.runtime.cpu import cpu_caps
    from scopert.runtime.selection.precision import bf16_verdict, measure_bf16

    caps = cpu_caps()
    if not caps.bf16:
        return {"measured": False, "passed": False, "why": f"the exporting CPU has no bf16 ({caps.bf16_evidence}); "
                "re-run `scopert export --cpu-gates` on a bf16 CPU", "cpu": caps.key}
    gate = measure_bf16(onnx_path, [tiles[i:i + 1] for i in range(len(tiles))], mask_threshold=card.mask_threshold())
    gate.pop("runtime_precisions")
    gate.update(measured=True, threshold_db=threshold_db, tile_shape=list(tiles.shape[1:]), cpu=caps.key,
                measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return dict(gate, passed=bf16_verdict(gate, threshold_db)[0])


def record_cpu_gates(onnx_path: str | Path, calib: Sequence[str | os.PathLike] | None = None, int8: bool = False,
                     tiles: int = 8) -> dict[str, Any]:
    """Measure the bf16 gate (and INT8 when asked) on real tiles and write them into the ONNX file's card."""
    import onnx

    from scopert.export.onnx_export import write_onnx, read_card
    from scopert.export.precision import load_calibration

    onnx_path = Path(onnx_path)
    card = read_card(onnx_path)
    batch = load_calibration(card, list(calib) if calib else None, tiles=tiles)
    gates = {"bf16_gate": bf16_gate_record(onnx_path, batch, card)}
    if int8:
        gates["int8_gate"] = quantize_int8(onnx_path, batch, card).gate
    card.precision.update(gates)
    proto = onnx.load(str(onnx_path))
    card.embed(proto)
    write_onnx(proto, onnx_path)
    return gates
