"""``scopert info``: what a model is and how it will run, in lines a person reads first; the card as JSON on request.

Imports the card and runtime helpers only (no torch, no onnx).
"""

from __future__ import annotations

from typing import Any

from scopert.card import ModelCard


def _axes_sizes(values: dict[str, Any]) -> str:
    return ", ".join(f"{a} {v:g}" if isinstance(v, float) else f"{a} {v}" for a, v in values.items()) or "-"


def summary_lines(card: ModelCard, model_name: str) -> list[str]:
    """The card in a dozen lines: tensors, halo and tiling, normalization, source, verification, precision gates."""
    from scopert.runtime.selection.precision import bf16_gate, int8_gate

    inp, out = card.input, card.output
    norm = card.normalization
    norm_text = {"percentile": f"percentile {norm.pmin:g}/{norm.pmax:g}", "zscore": "z-score",
                 "minmax": "min-max", "fixed": f"(x - {norm.offset:g}) / {norm.scale:g}"}.get(norm.kind, norm.kind)
    lines = [
        f"model        {model_name}: {card.family} {card.name!r}",
        f"input        {inp.axes}, {inp.channels} channel(s), divisor {_axes_sizes(inp.divisor)}"
        + (f", window of {inp.time_window} frames" if inp.time_window else "")
        + (f", fixed shape {_axes_sizes(inp.fixed)} (tiles of exactly that size, the halo inside)" if inp.fixed
           else ""),
        f"output       {out.axes}, {out.channels} channel(s), scale {_axes_sizes(out.scale)}",
        f"halo         {_axes_sizes(card.halo)}; tile-invariant: "
        + ("yes (crop stitching)" if card.tile_invariant else "no (blend stitching by default)"),
        "default tile planned per input: the fewest voxels computed per voxel written within memory (see "
        "--shape)" + (f"; training tile {_axes_sizes(card.default_tile)}" if card.default_tile else ""),
        f"normalize    {norm_text}{' per frame' if norm.per_frame else ''}",
    ]
    if card.postprocess:
        lines.append(f"postprocess  {_axes_sizes(card.postprocess)}")
    if card.source.path or card.source.format:
        lines.append(f"source       {card.source.format or '?'}: {card.source.path}")
    check = (card.verification or {}).get("onnx_vs_torch")
    if isinstance(check, dict) and "max_abs_error" in check:
        lines.append(f"verified     ONNX Runtime vs PyTorch: max abs {check['max_abs_error']:.3g} "
                     f"(atol {check.get('atol', 0):g}) on {len(check.get('shapes', []))} shapes")
    for name, gate in (("bf16 gate", bf16_gate(card)), ("INT8 gate", int8_gate(card))):
        if gate is not None:
            lines.append(f"{name:<12} {'passed' if gate.get('passed') else 'failed'}{_gate_value(gate)}")
    return lines


def _gate_value(gate: dict) -> str:
    """A gate's evidence in its own unit: the masks' Dice change for a segmentation, else PSNR."""
    dice = gate.get("dice_change", gate.get("value") if gate.get("metric") == "dice_change" else None)
    psnr = gate.get("psnr_db", gate.get("value") if gate.get("metric") == "psnr_db" else None)
    if isinstance(dice, (int, float)):
        return f", Dice change {float(dice):.4f} (segmentation masks)"
    return f", {float(psnr):.1f} dB" if isinstance(psnr, (int, float)) else ""
